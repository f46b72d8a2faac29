//! The classes as the panels show them: the per-class table's rows, the
//! most confused pairs and the class names.
use super::App;

/// The order of the per-class table's rows (o toggles it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassOrder {
    /// The dataset's order.
    Index,
    /// Worst first.
    Accuracy,
}

/// Images of class `truth` predicted as `predicted`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfusedPair {
    pub truth: usize,
    pub predicted: usize,
    /// Of `truth`'s validation images.
    pub rate: f64,
    pub count: u64,
}

/// A row of the per-class table.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassRow {
    pub index: usize,
    pub name: String,
    pub acc: Option<f64>,
    pub delta: Option<f64>,
    pub worst: bool,
}

impl App {
    /// Worst classes marked: 3, or a tenth of them when there are more than 30.
    pub fn worst_count(classes: usize) -> usize {
        (classes / 10).max(3).min(classes)
    }

    /// The per-class table in the chosen order.
    pub fn class_rows(&self) -> Vec<ClassRow> {
        let names: Vec<String> = self.info.as_ref().map(|i| i.classes.clone()).unwrap_or_default();
        let acc = self.last_val.as_ref().map(|v| &v.per_class);
        let mut rows: Vec<ClassRow> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let a = acc.and_then(|a| a.get(i).copied());
                let d = match (a, self.prev_per_class.as_ref().and_then(|p| p.get(i))) {
                    (Some(a), Some(p)) => Some(a - p),
                    _ => None,
                };
                ClassRow {
                    index: i,
                    name,
                    acc: a,
                    delta: d,
                    worst: false,
                }
            })
            .collect();
        let mut by_acc: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].acc.is_some()).collect();
        by_acc.sort_by(|&a, &b| {
            rows[a]
                .acc
                .partial_cmp(&rows[b].acc)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        if !by_acc.is_empty() {
            for &i in by_acc.iter().take(App::worst_count(rows.len())) {
                rows[i].worst = true;
            }
        }
        if self.class_order == ClassOrder::Accuracy && !by_acc.is_empty() {
            let mut sorted: Vec<ClassRow> = by_acc.iter().map(|&i| rows[i].clone()).collect();
            sorted.extend(rows.iter().filter(|r| r.acc.is_none()).cloned());
            rows = sorted;
        }
        rows
    }

    /// The class name of `i` ("class 7" when unknown).
    pub fn class_name(&self, i: usize) -> String {
        self.info
            .as_ref()
            .and_then(|info| info.classes.get(i).cloned())
            .unwrap_or_else(|| format!("class {i}"))
    }

    /// "cat → dog 14%".
    pub fn confused_label(&self, p: &ConfusedPair) -> String {
        format!(
            "{} → {} {:.0}%",
            self.class_name(p.truth),
            self.class_name(p.predicted),
            100.0 * p.rate
        )
    }
}

/// The `n` largest off-diagonal shares of a confusion matrix's rows
/// (confusion[true][predicted]), largest first.
pub fn confused_pairs(confusion: &[Vec<u64>], n: usize) -> Vec<ConfusedPair> {
    let mut pairs = Vec::new();
    for (t, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        if total == 0 {
            continue;
        }
        for (p, &count) in row.iter().enumerate() {
            if p != t && count > 0 {
                pairs.push(ConfusedPair {
                    truth: t,
                    predicted: p,
                    rate: count as f64 / total as f64,
                    count,
                });
            }
        }
    }
    pairs.sort_by(|a, b| {
        b.rate
            .partial_cmp(&a.rate)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.count.cmp(&a.count))
            .then((a.truth, a.predicted).cmp(&(b.truth, b.predicted)))
    });
    pairs.truncate(n);
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confused_pairs_rank_by_share_of_the_true_class() {
        // Class 1 has few images but half go to 2; class 0 loses 30 of 100 to 1.
        let m = vec![vec![70, 30, 0], vec![0, 2, 2], vec![1, 0, 99]];
        let p = confused_pairs(&m, 10);
        assert_eq!((p[0].truth, p[0].predicted), (1, 2));
        assert!((p[0].rate - 0.5).abs() < 1e-9);
        assert_eq!((p[1].truth, p[1].predicted, p[1].count), (0, 1, 30));
        assert_eq!(p.len(), 3);
        assert_eq!(confused_pairs(&m, 1).len(), 1);
        assert!(confused_pairs(&[vec![5, 0], vec![0, 5]], 3).is_empty());
    }

    #[test]
    fn worst_count_scales_with_the_classes() {
        assert_eq!(App::worst_count(2), 2);
        assert_eq!(App::worst_count(10), 3);
        assert_eq!(App::worst_count(100), 10);
        assert_eq!(App::worst_count(1000), 100);
    }
}
