//! Build slots: a bounded number of builds run at once, and a build a user
//! waits for (an interactive prepare) always gets the next free slot before
//! a background prebuild does.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A prepare somebody waits for.
    Interactive,
    /// A prebuild of a watched alias.
    Background,
}

#[derive(Debug, Default)]
struct Slots {
    running: usize,
    waiting_interactive: usize,
}

pub struct Scheduler {
    max: usize,
    slots: Mutex<Slots>,
    freed: Notify,
}

/// A held build slot; dropping it frees the slot.
pub struct Permit {
    scheduler: Arc<Scheduler>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.scheduler.slots.lock().expect("slots lock").running -= 1;
        self.scheduler.freed.notify_waiters();
    }
}

/// Counts an interactive waiter for as long as it waits (also when its
/// future is dropped, e.g. on cancellation).
struct Waiting<'a>(&'a Scheduler);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.slots.lock().expect("slots lock").waiting_interactive -= 1;
        // A background waiter may now go.
        self.0.freed.notify_waiters();
    }
}

impl Scheduler {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            slots: Mutex::new(Slots::default()),
            freed: Notify::new(),
        })
    }

    /// Waits for a slot. Background waiters go only while no interactive
    /// one waits.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        let _waiting = (priority == Priority::Interactive).then(|| {
            self.slots.lock().expect("slots lock").waiting_interactive += 1;
            Waiting(self)
        });
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.slots.lock().expect("slots lock");
                let others_first = priority == Priority::Background && s.waiting_interactive > 0;
                if s.running < self.max && !others_first {
                    s.running += 1;
                    return Permit {
                        scheduler: self.clone(),
                    };
                }
            }
            freed.await;
        }
    }

    /// Builds running now.
    pub fn running(&self) -> usize {
        self.slots.lock().expect("slots lock").running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn bounded_and_interactive_first() {
        let s = Scheduler::new(1);
        let first = s.acquire(Priority::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |p: Priority, name: &'static str| {
            let s = s.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let permit = s.acquire(p).await;
                order.lock().unwrap().push(name);
                settle().await;
                drop(permit);
            })
        };
        let bg = spawn(Priority::Background, "background");
        settle().await;
        let fg = spawn(Priority::Interactive, "interactive");
        settle().await;
        assert_eq!(s.running(), 1, "the bound holds");
        assert!(order.lock().unwrap().is_empty());
        drop(first);
        fg.await.unwrap();
        bg.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["interactive", "background"]);
        assert_eq!(s.running(), 0);
    }

    #[tokio::test]
    async fn cancelled_interactive_waiter_lets_background_go() {
        let s = Scheduler::new(1);
        let first = s.acquire(Priority::Interactive).await;
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { drop(s.acquire(Priority::Interactive).await) })
        };
        settle().await;
        waiter.abort();
        let _ = waiter.await;
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(2), s.acquire(Priority::Background))
            .await
            .expect("a background build gets the free slot");
        assert_eq!(s.running(), 1);
        drop(got);
    }

    #[tokio::test]
    async fn parallel_up_to_the_bound() {
        let s = Scheduler::new(2);
        let a = s.acquire(Priority::Interactive).await;
        let b = s.acquire(Priority::Background).await;
        assert_eq!(s.running(), 2);
        let third =
            tokio::time::timeout(Duration::from_millis(50), s.acquire(Priority::Interactive));
        assert!(third.await.is_err(), "a third build waits");
        drop((a, b));
        assert_eq!(s.running(), 0);
    }
}
