//! Bounded series for the charts: a run of 370K steps costs the same memory
//! and drawing time as a run of 1K.
use std::collections::VecDeque;

/// The last `cap` values.
#[derive(Clone, Debug)]
pub struct Recent {
    cap: usize,
    values: VecDeque<f64>,
}

impl Recent {
    pub fn new(cap: usize) -> Recent {
        Recent {
            cap: cap.max(1),
            values: VecDeque::with_capacity(cap.max(1)),
        }
    }

    pub fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn last(&self) -> Option<f64> {
        self.values.back().copied()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = f64> + ExactSizeIterator + '_ {
        self.values.iter().copied()
    }
}

/// The whole history in at most `cap` points: each point is the mean of
/// `bucket` consecutive samples, and `bucket` doubles whenever the points
/// fill up (adjacent pairs merge).
#[derive(Clone, Debug)]
pub struct Downsampled {
    cap: usize,
    bucket: usize,
    points: Vec<(f64, f64)>,
    /// The bucket being filled: sums of x and y, and the count.
    pending: (f64, f64, usize),
    samples: u64,
}

impl Downsampled {
    /// `cap` is rounded up to an even number of at least 2.
    pub fn new(cap: usize) -> Downsampled {
        let cap = cap.max(2).div_ceil(2) * 2;
        Downsampled {
            cap,
            bucket: 1,
            points: Vec::with_capacity(cap),
            pending: (0.0, 0.0, 0),
            samples: 0,
        }
    }

    pub fn push(&mut self, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        self.samples += 1;
        let p = &mut self.pending;
        p.0 += x;
        p.1 += y;
        p.2 += 1;
        if p.2 < self.bucket {
            return;
        }
        let n = p.2 as f64;
        self.points.push((p.0 / n, p.1 / n));
        self.pending = (0.0, 0.0, 0);
        if self.points.len() == self.cap {
            // Full buckets all hold `bucket` samples: pairs merge as plain means.
            self.points = self
                .points
                .chunks(2)
                .map(|c| ((c[0].0 + c[1].0) / 2.0, (c[0].1 + c[1].1) / 2.0))
                .collect();
            self.bucket *= 2;
        }
    }

    /// Every point, the partly filled bucket last; at most `cap` + 1.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let mut v = Vec::with_capacity(self.points.len() + 1);
        v.extend_from_slice(&self.points);
        let (sx, sy, n) = self.pending;
        if n > 0 {
            v.push((sx / n as f64, sy / n as f64));
        }
        v
    }

    /// Samples per point.
    pub fn bucket(&self) -> usize {
        self.bucket
    }

    /// Samples pushed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_the_last_values() {
        let mut r = Recent::new(3);
        for v in 0..10 {
            r.push(v as f64);
        }
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![7.0, 8.0, 9.0]);
        assert_eq!(r.last(), Some(9.0));
    }

    #[test]
    fn downsampled_stays_bounded_and_keeps_the_mean() {
        let mut d = Downsampled::new(100);
        let n = 370_000u64;
        for i in 0..n {
            d.push(i as f64, 1.0 + (i % 7) as f64);
        }
        let pts = d.points();
        assert!(pts.len() <= 101, "{} points", pts.len());
        assert!(pts.len() >= 50);
        assert_eq!(d.samples(), n);
        // x stays ordered and spans the whole run.
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(pts[0].0 < 5000.0 && pts.last().unwrap().0 > 360_000.0);
        // The mean of 1..=7 is 4: every full bucket (thousands of samples) is close.
        let full = &pts[..pts.len() - 1];
        assert!(full.iter().all(|p| (p.1 - 4.0).abs() < 0.1), "{pts:?}");
    }

    #[test]
    fn downsampled_ignores_non_finite() {
        let mut d = Downsampled::new(4);
        d.push(0.0, f64::NAN);
        d.push(1.0, 2.0);
        assert_eq!(d.points(), vec![(1.0, 2.0)]);
    }
}
