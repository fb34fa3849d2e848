//! The one table of host capabilities: which WIT interfaces each one is, which plugin
//! kinds may have it, and which grant turns it on. Linking, the inspection of a
//! component's imports, the manifest's checks and the audit report all read it, so a
//! capability is added in one place.

use crate::{Grants, Kind};

/// A host capability a plugin can import.
#[derive(Debug, Clone, Copy)]
pub struct Capability {
    /// Its name: the grant's name in `[grants]` when it has one (`kv`, `secrets`,
    /// `http`).
    pub name: &'static str,
    /// The WIT interfaces (or packages, ending in `/`) it is, without version.
    pub interfaces: &'static [&'static str],
    /// The plugin kinds that may have it.
    pub kinds: &'static [Kind],
    /// Whether the manifest must grant it (else every plugin of its kinds has it).
    pub gated: bool,
    /// Why the other kinds may not have it.
    pub not_for_others: &'static str,
}

const ALL: &[Kind] = &[Kind::Source, Kind::Transform, Kind::Sink, Kind::Api];

/// Every capability the host provides.
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "log",
        interfaces: &["tenon:plugin/types", "tenon:plugin/log"],
        kinds: ALL,
        gated: false,
        not_for_others: "",
    },
    Capability {
        name: "config",
        interfaces: &["tenon:plugin/config"],
        kinds: ALL,
        gated: false,
        not_for_others: "",
    },
    Capability {
        name: "kv",
        interfaces: &["tenon:plugin/kv"],
        kinds: &[Kind::Transform, Kind::Sink],
        gated: true,
        not_for_others: "only transforms and sinks have key-value storage (it is committed with the message they handle)",
    },
    Capability {
        name: "secrets",
        interfaces: &["tenon:plugin/secrets"],
        kinds: ALL,
        gated: true,
        not_for_others: "",
    },
    Capability {
        name: "http",
        interfaces: &["wasi:http/"],
        kinds: &[Kind::Sink, Kind::Api],
        gated: true,
        not_for_others: "only sink and API plugins reach the network",
    },
    Capability {
        name: "wasi",
        interfaces: &[
            "wasi:cli/",
            "wasi:io/",
            "wasi:clocks/",
            "wasi:random/",
            "wasi:filesystem/",
        ],
        kinds: ALL,
        gated: false,
        not_for_others: "",
    },
];

/// Interfaces no plugin gets, with why.
pub const NEVER: &[(&str, &str)] = &[(
    "wasi:sockets/",
    "raw sockets are never linked: the network is reachable only through wasi:http",
)];

impl Capability {
    /// Whether `grants` turn this capability on (always, for one that is not gated).
    pub fn granted(&self, grants: &Grants) -> bool {
        match self.name {
            "kv" => grants.kv,
            "secrets" => grants.all_secrets().next().is_some(),
            "http" => !grants.http.is_empty(),
            _ => !self.gated,
        }
    }

    /// Whether a plugin of `kind` may have it.
    pub fn allowed_for(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Whether a plugin of `kind` with `grants` gets it.
    pub fn linked_for(&self, kind: Kind, grants: &Grants) -> bool {
        self.allowed_for(kind) && self.granted(grants)
    }

    /// Whether `interface` (versioned or not) is this capability's.
    pub fn provides(&self, interface: &str) -> bool {
        let name = interface.split('@').next().unwrap_or(interface);
        self.interfaces.iter().any(|i| match i.strip_suffix('/') {
            Some(package) => name.split('/').next() == Some(package),
            None => name == *i,
        })
    }
}

/// The capability an interface belongs to, if the host provides it.
pub fn capability_of(interface: &str) -> Option<&'static Capability> {
    CAPABILITIES.iter().find(|c| c.provides(interface))
}

/// The capability named `name`.
pub fn capability(name: &str) -> Option<&'static Capability> {
    CAPABILITIES.iter().find(|c| c.name == name)
}

/// Why no plugin gets `interface`, if it is one of those.
pub fn never(interface: &str) -> Option<&'static str> {
    let package = interface.split('/').next().unwrap_or(interface);
    NEVER
        .iter()
        .find(|(prefix, _)| prefix.strip_suffix('/') == Some(package))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_interface_belongs_to_one_capability() {
        let of = |i: &str| capability_of(i).map(|c| c.name);
        assert_eq!(of("tenon:plugin/log@0.1.0"), Some("log"));
        assert_eq!(of("tenon:plugin/types"), Some("log"));
        assert_eq!(of("tenon:plugin/kv@0.1.0"), Some("kv"));
        assert_eq!(of("wasi:http/outgoing-handler@0.2.4"), Some("http"));
        assert_eq!(of("wasi:cli/stderr@0.2.4"), Some("wasi"));
        assert_eq!(of("wasi:sockets/tcp@0.2.4"), None);
        assert_eq!(of("tenon:plugin/kvx"), None);
        assert!(never("wasi:sockets/tcp@0.2.4").is_some());
        for c in CAPABILITIES {
            for i in c.interfaces {
                assert_eq!(
                    CAPABILITIES.iter().filter(|o| o.provides(i)).count(),
                    1,
                    "{i}"
                );
            }
        }
    }

    #[test]
    fn kinds_and_grants_decide_what_is_linked() {
        let kv = capability("kv").unwrap();
        let granted = Grants {
            kv: true,
            ..Grants::default()
        };
        assert!(kv.linked_for(Kind::Transform, &granted));
        assert!(!kv.linked_for(Kind::Source, &granted));
        assert!(!kv.linked_for(Kind::Transform, &Grants::default()));
        assert!(
            capability("log")
                .unwrap()
                .linked_for(Kind::Source, &Grants::default())
        );
    }
}
