//! Replay: re-run a range of the messages a flow accepted through its current plugin
//! versions. The event log holds every accepted message ([`crate::model::EventBody`]);
//! a replayed message keeps its id, so every id derived downstream is the same again,
//! and a sink returns the recorded outcome of what it already delivered instead of
//! calling the target twice.

use super::Runtime;
use crate::model::{EventBody, queue_name};
use crate::store::StoreError;

impl Runtime {
    /// Re-run the messages `flow` accepted at offsets `from..=to` from the first stage
    /// of `route`, on the current plugin versions. Returns the offsets replayed.
    pub async fn replay(
        &self,
        flow: &str,
        route: &[String],
        from: u64,
        to: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let Some(first) = route.first() else {
            return Ok(Vec::new());
        };
        let mut offsets = Vec::new();
        let mut items = Vec::new();
        for event in self.store.events(from, to).await? {
            if let (true, EventBody::Accepted { mut envelope }) = (event.flow == flow, event.body) {
                envelope.stage = 0;
                envelope.route = route.to_vec();
                envelope.attempts.clear();
                envelope.not_before_ms = 0;
                envelope.trail.truncate(1);
                offsets.push(event.offset);
                items.push((queue_name(flow, first), *envelope));
            }
        }
        self.store.requeue(items).await?;
        Ok(offsets)
    }
}
