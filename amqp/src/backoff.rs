//! The pause between retries after a failure: exponential with jitter
//! (backon), so that processes that failed together (a broker restart) do
//! not come back at the same instants, and capped. The worker retries its
//! connections and database batches with it, the client crate's publisher
//! and listener their broker connections.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// First pause after a failure, before jitter.
pub const INITIAL: Duration = Duration::from_millis(100);

/// Pauses that double from about 100 ms and never exceed `max`; `reset`
/// after a success.
#[derive(Debug)]
pub struct Backoff {
    /// The policy, kept to start over on `reset`.
    builder: ExponentialBuilder,
    /// Where the current run of failures stands.
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Pauses of at most `max` (at least 1 ms).
    pub fn new(max: Duration) -> Backoff {
        // backon's jitter adds up to 100% of each step: steps capped at half
        // of `max` keep every pause within `max`, each step drawn between
        // the step and twice it.
        let cap = (max / 2).max(Duration::from_millis(1));
        let builder = ExponentialBuilder::new()
            .with_min_delay(INITIAL.min(cap))
            .with_max_delay(cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
        }
    }

    /// The pause to take now; the next one will be about twice as long.
    pub fn next_delay(&mut self) -> Duration {
        // Without a limit on attempts the iterator never ends; the fallback
        // only keeps the type honest.
        self.delays.next().unwrap_or(INITIAL)
    }

    /// Starts over from the first pause: after a success.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_never_exceed_the_cap() {
        let max = Duration::from_millis(1000);
        let runs: Vec<Vec<Duration>> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(max);
                (0..12).map(|_| b.next_delay()).collect()
            })
            .collect();
        for run in &runs {
            assert!(run.iter().all(|d| *d <= max), "{run:?}");
            assert!(
                run[0] >= INITIAL && run[0] < INITIAL * 2,
                "first pause: {:?}",
                run[0]
            );
            // Once capped, pauses stay between half the cap and the cap.
            assert!(run[8..].iter().all(|d| *d >= max / 2), "{run:?}");
        }
        // Two processes failing together do not retry at the same instants.
        for attempt in 0..12 {
            let first = runs[0][attempt];
            assert!(
                runs.iter().any(|run| run[attempt] != first),
                "attempt {attempt}: every run paused {first:?}"
            );
        }
    }

    #[test]
    fn reset_starts_over_and_a_small_cap_is_kept() {
        let mut b = Backoff::new(Duration::from_millis(10_000));
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() >= Duration::from_millis(5_000));
        b.reset();
        assert!(b.next_delay() < INITIAL * 2);
        let mut small = Backoff::new(Duration::from_millis(100));
        assert!((0..10).all(|_| small.next_delay() <= Duration::from_millis(100)));
        let mut tiny = Backoff::new(Duration::ZERO);
        assert!((0..10).all(|_| tiny.next_delay() <= Duration::from_millis(2)));
    }
}
