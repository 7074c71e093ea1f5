//! Bounds on what tenants can make the controller ask of agents: log reads are proxied to
//! the agent of the task's node, each on a blocking thread for up to its timeout. Without a
//! bound, a flood of log reads against a hung agent would take every blocking thread, and
//! with them the scheduling tick's. At most `max_log_fetches` run at once, and
//! `max_log_fetches_per_agent` against one agent; beyond, a read is answered 503 at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct FetchLimit {
    total: usize,
    per_agent: usize,
    /// Fetches in flight: in all, and per agent (by its log server's address).
    inflight: Mutex<(usize, HashMap<String, usize>)>,
}

/// A fetch in flight; its place is given back when dropped (move it into the thread that
/// fetches, so that a request given up on still counts until its fetch ends).
pub struct FetchSlot {
    limit: Arc<FetchLimit>,
    key: String,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Total(usize),
    Agent(usize),
}

impl FetchLimit {
    pub fn new(total: usize, per_agent: usize) -> Arc<FetchLimit> {
        Arc::new(FetchLimit {
            total,
            per_agent,
            inflight: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn take(self: &Arc<Self>, agent: &str) -> Result<FetchSlot, Busy> {
        let mut g = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        if *total >= self.total {
            return Err(Busy::Total(self.total));
        }
        let n = per.entry(agent.to_string()).or_insert(0);
        if *n >= self.per_agent {
            return Err(Busy::Agent(self.per_agent));
        }
        *n += 1;
        *total += 1;
        Ok(FetchSlot {
            limit: self.clone(),
            key: agent.to_string(),
        })
    }

    /// Fetches in flight now.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        let mut g = self
            .limit
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_all_and_per_agent_and_given_back() {
        let l = FetchLimit::new(3, 2);
        let a1 = l.take("a").unwrap();
        let _a2 = l.take("a").unwrap();
        assert_eq!(l.take("a").err(), Some(Busy::Agent(2)));
        let _b1 = l.take("b").unwrap();
        assert_eq!(l.take("c").err(), Some(Busy::Total(3)));
        drop(a1);
        assert_eq!(l.in_flight(), 2);
        let _c = l.take("c").unwrap();
        assert_eq!(l.take("a").err(), Some(Busy::Total(3)));
    }
}
