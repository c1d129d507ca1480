//! How the caller lets the core split a long job (restoring a handed-over registry, while
//! forwarding waits) across threads: the core starts none itself, it is handed a [`Parallel`].

/// One job of a [`Parallel`]: called with its index.
pub type Job<'j> = &'j (dyn Fn(usize) + Sync);

/// What runs `n` jobs.
pub type Runner = dyn Fn(usize, Job<'_>) + Sync;

/// Runs `job(i)` once for every `i` in `0..n`, possibly at once on `threads` threads, and returns
/// once every call has returned (or one panicked, whose result is then missing).
pub struct Parallel<'a> {
    /// How many jobs are worth running at once.
    pub threads: usize,
    /// The runner.
    pub run: &'a Runner,
}

impl Parallel<'static> {
    /// One job after the other on the calling thread.
    pub fn serial() -> Parallel<'static> {
        Parallel {
            threads: 1,
            run: &|n, job| (0..n).for_each(job),
        }
    }
}

impl Parallel<'_> {
    /// `job(i)` for every `i` in `0..n`, each result in its place; an error if a job panicked.
    pub fn map<T: Send>(
        &self,
        n: usize,
        job: impl Fn(usize) -> T + Sync,
    ) -> Result<Vec<T>, &'static str> {
        let slots: Vec<std::sync::Mutex<Option<T>>> =
            (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        (self.run)(n, &|i| {
            let r = job(i);
            if let Ok(mut slot) = slots[i].lock() {
                *slot = Some(r);
            }
        });
        slots
            .into_iter()
            .map(|s| s.into_inner().ok().flatten().ok_or("a parallel job failed"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_runs_once_and_its_result_keeps_its_place() {
        let p = Parallel::serial();
        assert_eq!(p.map(5, |i| i * 10).unwrap(), vec![0, 10, 20, 30, 40]);
        let skipping = Parallel {
            threads: 2,
            run: &|n, job| (0..n).filter(|i| i % 2 == 0).for_each(job),
        };
        assert!(
            skipping.map(3, |i| i).is_err(),
            "a missing result is an error"
        );
    }
}
