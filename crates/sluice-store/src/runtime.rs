//! A minimal `block_on` for calling `object_store`'s async API from the store's blocking threads
//! (flush, compaction, retention), which have no async runtime of their own.
//!
//! It is not an executor for anything else: it parks the calling thread until the one future it
//! polls is woken, which suits `object_store`'s local file system (it runs its I/O inline, or on
//! tokio's blocking pool when called inside a runtime).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Run `f` to completion on this thread.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            // A spurious unpark only costs one more poll.
            Poll::Pending => thread::park(),
        }
    }
}
