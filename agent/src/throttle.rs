//! A bandwidth cap shared by every upload of a run.
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Throttle {
    bytes_per_sec: Option<u64>,
    next_free: Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Throttle { bytes_per_sec, next_free: Mutex::new(Instant::now()) }
    }

    /// Waits for the time `bytes` take at the cap, after the reservations
    /// made before (in call order, so concurrent uploads share the cap).
    pub async fn acquire(&self, bytes: u64) {
        let Some(rate) = self.bytes_per_sec else { return };
        let done = {
            let mut next = self.next_free.lock().expect("throttle lock");
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            *next
        };
        tokio::time::sleep_until(done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_the_rate() {
        let t = Throttle::new(Some(1000));
        let begin = Instant::now();
        for _ in 0..5 {
            t.acquire(1000).await;
        }
        // five transfers of one second each at the cap
        assert!(begin.elapsed() >= Duration::from_secs(5));
        let free = Throttle::new(None);
        let b = Instant::now();
        free.acquire(u64::MAX).await;
        assert!(b.elapsed() < Duration::from_millis(1));
    }
}
