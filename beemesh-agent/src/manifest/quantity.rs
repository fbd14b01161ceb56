//! Kubernetes resource quantities for the two resources beemesh limits: cpu (`500m`, `1`,
//! `0.25`) in millicores and memory (`64Mi`, `1G`, `1048576`) in bytes.

/// Millicores of a cpu quantity.
pub fn parse_cpu_millis(q: &str) -> Result<u64, String> {
    let bad = || format!("invalid cpu quantity {q:?} (examples: 500m, 1, 0.25)");
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| bad());
    }
    let cores: f64 = q.parse().map_err(|_| bad())?;
    if !(cores.is_finite() && cores >= 0.0) {
        return Err(bad());
    }
    Ok((cores * 1000.0).round() as u64)
}

/// Bytes of a memory quantity.
pub fn parse_memory_bytes(q: &str) -> Result<u64, String> {
    let bad = || format!("invalid memory quantity {q:?} (examples: 64Mi, 1Gi, 500M, 1048576)");
    const SUFFIXES: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, unit) =
        SUFFIXES.iter().find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m))).unwrap_or((q, 1));
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(bad());
    }
    let bytes = value * unit as f64;
    if bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("1"), Ok(1000));
        assert_eq!(parse_cpu_millis("0.25"), Ok(250));
        assert!(parse_cpu_millis("fast").is_err());
        assert!(parse_cpu_millis("-1").is_err());
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory_bytes("1.5Ki"), Ok(1536));
        assert!(parse_memory_bytes("lots").is_err());
        assert!(parse_memory_bytes("64MiB").is_err());
    }
}
