//! Group commit: one writer thread turns whatever records have queued up into one
//! transaction and one fsync.
//!
//! Callers hand records over in sequence order and wait (blocking, or through the
//! `on_durable` callback) until the durable sequence number reaches theirs. While a batch is
//! being synced the next one gathers, so the number of fsyncs per second stays bounded by the
//! disk while the number of records per fsync grows with the load.

use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::{Record, Store};

/// The writer failed: nothing after `durable_seq` is on disk, and nothing more will be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event log cannot be written ({message}); records after {durable_seq} are not durable")]
pub struct CommitError {
    pub durable_seq: u64,
    pub message: String,
}

#[derive(Default)]
struct State {
    durable: u64,
    failed: Option<CommitError>,
    batches: u64,
}

type Callback = Box<dyn Fn(Result<u64, CommitError>) + Send>;

pub struct GroupCommit {
    tx: Mutex<Option<Sender<Record>>>,
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the writer over `store`, whose log ends at `durable` (its `last_seq`).
    /// `on_commit` is called from the writer thread after every batch with the new durable
    /// sequence number, or once with the error that stopped it.
    pub fn start(
        store: Box<dyn Store>,
        durable: u64,
        max_batch: usize,
        on_commit: Callback,
    ) -> GroupCommit {
        let (tx, rx) = channel();
        let state = Arc::new((
            Mutex::new(State {
                durable,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("gosok-log-writer".into())
            .spawn(move || writer(store, rx, max_batch.max(1), st, on_commit))
            .ok();
        GroupCommit {
            tx: Mutex::new(Some(tx)),
            state,
            thread: Mutex::new(thread),
        }
    }

    /// Queues a record. Records must be handed over in sequence order (callers serialise
    /// assignment of sequence numbers and the call to `append`).
    pub fn append(&self, r: Record) -> Result<(), CommitError> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        match tx.as_ref().map(|tx| tx.send(r)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.failure()),
        }
    }

    fn failure(&self) -> CommitError {
        let s = self.state.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.failed.clone().unwrap_or(CommitError {
            durable_seq: s.durable,
            message: "the log writer has stopped".into(),
        })
    }

    /// The last sequence number known to be on disk.
    pub fn durable_seq(&self) -> u64 {
        self.state
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .durable
    }

    /// Batches (transactions, fsyncs) written so far.
    pub fn batches(&self) -> u64 {
        self.state
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .batches
    }

    /// Blocks until `seq` is durable, or the writer failed before it was.
    pub fn wait_durable(&self, seq: u64) -> Result<(), CommitError> {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if s.durable >= seq {
                return Ok(());
            }
            if let Some(e) = &s.failed {
                return Err(e.clone());
            }
            s = cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes what is queued, then stops the writer.
    pub fn close(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(
    mut store: Box<dyn Store>,
    rx: Receiver<Record>,
    max_batch: usize,
    state: Arc<(Mutex<State>, Condvar)>,
    on_commit: Callback,
) {
    let mut batch = Vec::with_capacity(max_batch.min(4096));
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let result = store.append(&batch);
        let (m, cv) = &*state;
        let mut s = m.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                s.durable = batch.last().map_or(s.durable, |r| r.seq);
                s.batches += 1;
                let d = s.durable;
                drop(s);
                cv.notify_all();
                on_commit(Ok(d));
            }
            Err(e) => {
                let err = CommitError {
                    durable_seq: s.durable,
                    message: e.to_string(),
                };
                s.failed = Some(err.clone());
                drop(s);
                cv.notify_all();
                on_commit(Err(err));
                return;
            }
        }
    }
}
