//! The threads a query runs on, apart from the caller's and from every other query's.
//!
//! A query stops only when its plan yields (lib.rs, coop.rs), and some plans compute for minutes
//! in one poll: a join whose filter matches nothing produces no batch to yield on. On the
//! caller's runtime such a poll holds one of its threads; in the store those threads also serve
//! `/healthz`, pull the sources and act on SIGTERM. On a runtime shared by all queries it holds
//! that runtime's threads, and every later query waits behind it. So each query gets a runtime
//! of its own: it can hold only those threads, the caller gets its answer at the time limit
//! whatever the plan does, and the store stops without waiting for it.

use std::future::Future;
use std::io;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// Stack of each query thread: room for what recursion DataFusion does not move to the heap.
const QUERY_STACK_BYTES: usize = 8 << 20;

/// A multi-threaded runtime for one query. Dropping it does not wait for a query still in a
/// poll (the thread finishes the poll, then drops the query and ends).
pub(crate) struct QueryPool {
    runtime: Option<Runtime>,
}

impl QueryPool {
    pub(crate) fn new(threads: usize) -> io::Result<QueryPool> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sluice-query")
            // Planning walks expression trees recursively; DataFusion grows its stack on the heap
            // where it recurses (`recursive_protection`), and the rest (dropping a deep tree) gets
            // room here. Only the pages a query touches are ever committed.
            .thread_stack_size(QUERY_STACK_BYTES)
            .enable_all()
            .build()?;
        Ok(QueryPool { runtime: Some(runtime) })
    }

    pub(crate) fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().expect("the runtime is taken only on drop").spawn(f)
    }
}

impl Drop for QueryPool {
    fn drop(&mut self) {
        // A plain drop would block until every query's current poll ended (minutes for the plans
        // above), and panics when dropped inside another runtime.
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
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
