//! CPU time of an execution: what the host really spends running it.
//!
//! An execution is a future that the connection's task polls. Every poll
//! reads the polling thread's CPU clock before and after and charges the
//! difference, so guest code and the work host calls do for the guest
//! (copying messages, queueing them, logging) are charged, and time the
//! execution is not polled — waiting for its client, for a timer, for a
//! turn on the host's scheduler or in the async runtime's queue — is not.
//! The clock is the thread's own, so the operating system running other
//! threads in the middle of a poll is not charged either.
//!
//! Most polls are short (a message handled at once), and the thread clock
//! is a system call, so a poll reads it only at its start: one that ends
//! within [`SHORT_POLL`] of wall-clock time is charged that wall-clock
//! time, which bounds its CPU time from above (the thread was preempted
//! during it, if at all, for less than that). Longer polls read the thread
//! clock again and are charged exactly.
//!
//! The epoch callback runs inside a poll (on the polling thread) and sees
//! the poll in progress; the end of every poll checks the limit too, so CPU
//! burnt in host calls is stopped even where no guest code runs for a
//! tick.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::limits::LimitExceeded;

/// The calling thread's CPU time, in nanoseconds.
///
/// A system call on Linux (the vDSO does not serve per-thread clocks):
/// some hundreds of nanoseconds, paid once per short poll of an execution
/// and twice per long one.
#[cfg(unix)]
pub(crate) fn thread_cpu_nanos() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds * 1_000_000_000 + nanos
}

/// Without a per-thread CPU clock, the monotonic clock: a poll is charged
/// its wall-clock time, which also counts the operating system running
/// other threads in the middle of it.
#[cfg(not(unix))]
pub(crate) fn thread_cpu_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// A poll that ends within this much wall-clock time is charged its
/// wall-clock time instead of a second read of the thread's clock.
const SHORT_POLL: Duration = Duration::from_micros(50);

/// `poll_started` between polls.
const NOT_POLLING: u64 = u64::MAX;

/// CPU time charged to one execution, against its limit. Shared by the
/// execution's store (for the epoch callback) and whoever polls it.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    limit: Duration,
    /// Nanoseconds charged by finished polls and by work done for the
    /// execution elsewhere (its output streams).
    charged: AtomicU64,
    /// The polling thread's CPU clock when the poll in progress began;
    /// [`NOT_POLLING`] between polls.
    poll_started: AtomicU64,
}

impl CpuMeter {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            charged: AtomicU64::new(0),
            poll_started: AtomicU64::new(NOT_POLLING),
        }
    }

    /// CPU time used so far. Called from inside a poll (the epoch
    /// callback), it includes that poll up to now.
    pub(crate) fn used(&self) -> Duration {
        let mut nanos = self.charged.load(Ordering::Relaxed);
        let started = self.poll_started.load(Ordering::Relaxed);
        if started != NOT_POLLING {
            nanos += thread_cpu_nanos().saturating_sub(started);
        }
        Duration::from_nanos(nanos)
    }

    /// An error once the execution has used more than its limit.
    pub(crate) fn check(&self) -> Result<(), LimitExceeded> {
        let used = self.used();
        if used > self.limit {
            return Err(LimitExceeded::CpuTime {
                used,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Start counting from zero (a reused instance's next execution).
    pub(crate) fn reset(&self) {
        self.charged.store(0, Ordering::Relaxed);
    }

    /// Charge work done for the execution outside its polls.
    pub(crate) fn charge(&self, nanos: u64) {
        self.charged.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Run `work`, charging every poll of it. When a poll leaves the
    /// execution over its limit, `work` is dropped and the result is the
    /// limit error.
    pub(crate) async fn run<F, T>(&self, work: F) -> wasmtime::Result<T>
    where
        F: Future<Output = wasmtime::Result<T>>,
    {
        let mut work = pin!(work);
        std::future::poll_fn(|cx| {
            let started = thread_cpu_nanos();
            let wall = Instant::now();
            self.poll_started.store(started, Ordering::Relaxed);
            let polled = work.as_mut().poll(cx);
            let elapsed = wall.elapsed();
            let nanos = if elapsed < SHORT_POLL {
                elapsed.as_nanos() as u64
            } else {
                thread_cpu_nanos().saturating_sub(started)
            };
            self.poll_started.store(NOT_POLLING, Ordering::Relaxed);
            self.charge(nanos);
            match polled {
                Poll::Ready(result) => Poll::Ready(result),
                Poll::Pending => match self.check() {
                    Ok(()) => Poll::Pending,
                    Err(exceeded) => Poll::Ready(Err(wasmtime::Error::new(exceeded))),
                },
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burn CPU on this thread for about `duration`.
    fn burn(duration: Duration) {
        let until = thread_cpu_nanos() + duration.as_nanos() as u64;
        while thread_cpu_nanos() < until {
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn polls_are_charged_and_waits_are_not() {
        let meter = CpuMeter::new(Duration::from_secs(60));
        let result = meter
            .run(async {
                burn(Duration::from_millis(20));
                tokio::time::sleep(Duration::from_millis(200)).await;
                burn(Duration::from_millis(20));
                Ok(7)
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        let used = meter.used();
        // The two bursts, not the sleep between them.
        assert!(used >= Duration::from_millis(40), "{used:?}");
        assert!(used < Duration::from_millis(200), "{used:?}");
    }

    #[tokio::test]
    async fn a_long_poll_is_charged_its_cpu_time_not_its_wall_clock_time() {
        let meter = CpuMeter::new(Duration::from_secs(60));
        meter
            .run(async {
                // Off the CPU for most of the poll, as if preempted.
                std::thread::sleep(Duration::from_millis(100));
                burn(Duration::from_millis(5));
                Ok(())
            })
            .await
            .unwrap();
        let used = meter.used();
        assert!(used >= Duration::from_millis(5), "{used:?}");
        assert!(used < Duration::from_millis(60), "{used:?}");
    }

    #[tokio::test]
    async fn short_polls_are_charged_no_more_than_their_wall_clock_time() {
        let meter = CpuMeter::new(Duration::from_secs(60));
        let wall = Instant::now();
        let result: wasmtime::Result<()> = meter
            .run(async {
                for _ in 0..1000 {
                    tokio::task::yield_now().await;
                }
                Ok(())
            })
            .await;
        result.unwrap();
        let used = meter.used();
        assert!(used > Duration::ZERO);
        assert!(used <= wall.elapsed(), "{used:?}");
    }

    #[tokio::test]
    async fn a_poll_that_ends_over_the_limit_stops_the_work() {
        let meter = CpuMeter::new(Duration::from_millis(10));
        let result: wasmtime::Result<()> = meter
            .run(async {
                loop {
                    burn(Duration::from_millis(5));
                    tokio::task::yield_now().await;
                }
            })
            .await;
        let error = result.unwrap_err();
        let exceeded = error.downcast_ref::<LimitExceeded>().unwrap();
        assert!(
            matches!(exceeded, LimitExceeded::CpuTime { limit, .. } if *limit == Duration::from_millis(10)),
            "{exceeded:?}"
        );
    }

    #[test]
    fn used_includes_the_poll_in_progress() {
        let meter = CpuMeter::new(Duration::from_millis(1));
        meter
            .poll_started
            .store(thread_cpu_nanos(), Ordering::Relaxed);
        burn(Duration::from_millis(5));
        assert!(meter.used() >= Duration::from_millis(5));
        assert!(meter.check().is_err());
        meter.poll_started.store(NOT_POLLING, Ordering::Relaxed);
        meter.reset();
        assert_eq!(meter.used(), Duration::ZERO);
    }
}
