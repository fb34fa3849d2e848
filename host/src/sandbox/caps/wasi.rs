//! WASI's basics: `wasi:cli`, `wasi:io`, `wasi:clocks`, `wasi:random` and
//! `wasi:filesystem`, with no preopened files, no environment, no arguments; stdout
//! is discarded and stderr kept (panic messages land there). `wasi:sockets` is never
//! linked: the network is reachable only through `wasi:http`.

use super::PluginState;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// A call's WASI context: nothing but stderr, into `stderr`.
///
/// Keep the environment, the arguments and the preopened directories empty, beyond
/// what a plugin is owed: wasi-libc frees what it lifts of them (allocated by the
/// component's `cabi_realloc`) with its own `free`, which the SDK's allocator does not
/// serve (`plugin-sdk/src/heap.rs`). One environment variable granted here made a
/// plugin that reads its environment trap on a wild pointer;
/// `hostile_plugins_are_contained_with_exact_errors` checks that a plugin sees none.
fn context(stderr: &MemoryOutputPipe) -> WasiCtx {
    WasiCtxBuilder::new().stderr(stderr.clone()).build()
}

/// WASI's basics, without `wasi:sockets` (which wasmtime-wasi's own
/// `add_to_linker_async` would link too).
pub fn add_to_linker(l: &mut Linker<PluginState>) -> anyhow::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    type S = PluginState;
    wasmtime_wasi_io::add_to_linker_async(l)?;
    clocks::wall_clock::add_to_linker::<S, WasiClocks>(l, <S as WasiClocksView>::clocks)?;
    clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(l, <S as WasiClocksView>::clocks)?;
    filesystem::types::add_to_linker::<S, WasiFilesystem>(
        l,
        <S as WasiFilesystemView>::filesystem,
    )?;
    filesystem::preopens::add_to_linker::<S, WasiFilesystem>(
        l,
        <S as WasiFilesystemView>::filesystem,
    )?;
    random::random::add_to_linker::<S, WasiRandom>(l, <S as WasiRandomView>::random)?;
    random::insecure::add_to_linker::<S, WasiRandom>(l, <S as WasiRandomView>::random)?;
    random::insecure_seed::add_to_linker::<S, WasiRandom>(l, <S as WasiRandomView>::random)?;
    let cli = <S as WasiCliView>::cli;
    cli::exit::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::environment::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stdin::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stdout::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stderr::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_input::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_output::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stdin::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stdout::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stderr::add_to_linker::<S, WasiCli>(l, cli)?;
    Ok(())
}

impl wasmtime_wasi_io::IoView for PluginState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = &self.stderr;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| context(stderr)),
            table: &mut self.table,
        }
    }
}
