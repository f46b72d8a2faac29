//! Number and text formats shared by the panels.

/// "1.0e-3".
pub fn lr(v: f64) -> String {
    format!("{v:.1e}")
}

/// A fraction as a percentage: "85.3%".
pub fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// A change of a fraction in percentage points: "+2.1", "-0.5".
pub fn delta_pp(d: f64) -> String {
    let pp = 100.0 * d;
    if pp.abs() < 0.05 {
        "0.0".into()
    } else {
        format!("{pp:+.1}")
    }
}

/// "0:01:23".
pub fn hms(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A loss for axes and captions: 4 significant digits.
pub fn loss(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Local wall-clock time "HH:MM:SS".
pub fn clock() -> String {
    clock_at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    )
}

/// "14:03:59" (local time) of a Unix time in seconds.
pub fn clock_at(unix: f64) -> String {
    let now = unix.max(0.0) as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `now` and `tm` are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        let s = now as u64 % 86_400;
        return format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// `s` cut to `width` characters, "…" marking a cut.
pub fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// `s` split into lines of at most `width` characters; continuation lines
/// are indented by `indent`.
pub fn wrap(s: &str, width: usize, indent: usize) -> Vec<String> {
    let width = width.max(indent + 1);
    let chars: Vec<char> = s.chars().collect();
    let mut lines = Vec::new();
    let mut i = 0;
    let mut first = true;
    while i < chars.len() || first {
        let room = if first { width } else { width - indent };
        let end = (i + room).min(chars.len());
        // Break at the last space when one is in the second half of the line.
        let mut cut = end;
        if end < chars.len() {
            if let Some(sp) = chars[i..end].iter().rposition(|&c| c == ' ') {
                if sp > room / 2 {
                    cut = i + sp + 1;
                }
            }
        }
        let piece: String = chars[i..cut].iter().collect();
        let piece = piece.trim_end().to_owned();
        lines.push(if first {
            piece
        } else {
            format!("{}{piece}", " ".repeat(indent))
        });
        i = cut;
        first = false;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(lr(1e-2), "1.0e-2");
        assert_eq!(lr(1e-3), "1.0e-3");
        assert_eq!(lr(0.02), "2.0e-2");
        assert_eq!(pct(0.8534), "85.3%");
        assert_eq!(delta_pp(0.021), "+2.1");
        assert_eq!(delta_pp(-0.005), "-0.5");
        assert_eq!(delta_pp(0.0001), "0.0");
        assert_eq!(hms(3723.0), "1:02:03");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(loss(2.30512), "2.305");
        assert_eq!(clock().len(), 8);
    }

    #[test]
    fn wraps_long_lines() {
        let w = wrap(
            "checkpoint saved: /a/very/long/path/to/ckpt-0000000123.safetensors",
            20,
            2,
        );
        assert!(w.iter().all(|l| l.chars().count() <= 20), "{w:?}");
        assert_eq!(
            w.concat().replace(' ', ""),
            "checkpointsaved:/a/very/long/path/to/ckpt-0000000123.safetensors"
        );
        assert_eq!(wrap("", 10, 2), vec![String::new()]);
    }
}
