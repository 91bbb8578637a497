//! Medians: the machine is shared and noisy, so every figure is the median
//! of several runs (and ratios are taken within one repeat, baseline and
//! Fanout measured back to back).

/// The median of `values` (the mean of the two middle ones for an even
/// count); `None` when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// `seconds` as milliseconds or seconds, for people.
pub fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}

/// `kib` as MiB.
pub fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}
