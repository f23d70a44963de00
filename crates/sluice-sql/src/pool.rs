//! The threads a query runs on, apart from the caller's and from every other query's.
//!
//! A query stops only when its plan yields (lib.rs, coop.rs), and some plans compute for minutes
//! in one poll: a join whose filter matches nothing produces no batch to yield on. On the
//! caller's runtime such a poll holds one of its threads; in the store those threads also serve
//! `/healthz`, pull the sources and act on SIGTERM. On a runtime shared by all queries it holds
//! that runtime's threads, and every later query waits behind it. So each query gets a runtime
//! of its own: it can hold only those threads, the caller gets its answer at the time limit
//! whatever the plan does, and the store stops without waiting for it.
//!
//! The slot of a query abandoned at its time limit belongs to its runtime, not to its first task:
//! DataFusion runs partitions in tasks of their own, and the first may be idle (waiting on them)
//! when the query is abandoned. So that slot is given back only once every thread of the runtime
//! has finished its current poll, by a thread that waits for that. A query that ended by itself
//! gives its slot back at once ([`QueryPool::finished`]).

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::runtime::{Builder, Runtime};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

/// Stack of each query thread: room for what recursion DataFusion does not move to the heap.
const QUERY_STACK_BYTES: usize = 8 << 20;

/// A multi-threaded runtime for one query. Dropping it does not wait for a query still in a
/// poll (the thread finishes the poll, then drops the query and ends).
pub(crate) struct QueryPool {
    runtime: Option<Runtime>,
    /// The query's slot, given back once the runtime has stopped (see the module docs).
    permit: Option<OwnedSemaphorePermit>,
}

impl QueryPool {
    pub(crate) fn new(threads: usize, name: &str, permit: Option<OwnedSemaphorePermit>) -> io::Result<QueryPool> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            // Planning walks expression trees recursively; DataFusion grows its stack on the heap
            // where it recurses (`recursive_protection`), and the rest (dropping a deep tree) gets
            // room here. Only the pages a query touches are ever committed.
            .thread_stack_size(QUERY_STACK_BYTES)
            .enable_all()
            .build()?;
        Ok(QueryPool { runtime: Some(runtime), permit })
    }

    pub(crate) fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().expect("the runtime is taken only on drop").spawn(f)
    }

    /// The query's first task has ended (an answer or an error): what it started was dropped with
    /// it, so the slot is given back now, without waiting for the threads to wind down.
    pub(crate) fn finished(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        drop(self.permit.take());
    }
}

impl Drop for QueryPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks until every worker's current poll has ended (minutes for the
        // plans above) and panics inside another runtime: a thread of its own does it, then gives
        // the slot back. Idle tasks are dropped at once; a computing one stops at its next yield.
        let Some(runtime) = self.runtime.take() else { return };
        let parts = Arc::new(Mutex::new(Some((runtime, self.permit.take()))));
        let for_thread = Arc::clone(&parts);
        let spawned = std::thread::Builder::new().name("sluice-query-end".into()).spawn(move || {
            let taken = for_thread.lock().unwrap_or_else(PoisonError::into_inner).take();
            drop(taken); // the runtime first (waiting for its threads), then the slot
        });
        if let Err(e) = spawned {
            // No thread to wait with: the runtime is let go without waiting, the slot with it.
            eprintln!("sluice: cannot start a thread to end a query's runtime ({e}); its slot is given back now");
            if let Some((runtime, permit)) = parts.lock().unwrap_or_else(PoisonError::into_inner).take() {
                runtime.shutdown_background();
                drop(permit);
            }
        }
    }
}

/// Aborts its task when dropped: a caller that goes away (time limit, client gone) cancels the
/// query at its next yield.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
