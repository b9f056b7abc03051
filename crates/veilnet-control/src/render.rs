//! The `veilnet status` report: a status header and two tables.

use crate::view::{CircuitView, NodeView, StatusView};

/// Renders the `veilnet status` report: a status header, a table of nodes
/// (short peer id, roles, region, bandwidth, first link address; `*` marks
/// this node) and a table of circuits (id, state, age, streams, isolation
/// group, hops as short ids joined by " → ").
///
/// Strings that other nodes advertise (region, version, addresses) are
/// stripped of control characters and truncated so a hostile descriptor
/// cannot inject terminal escapes or wreck the layout.
pub fn render_status(status: &StatusView, nodes: &[NodeView], circuits: &[CircuitView]) -> String {
    let mut out = String::new();
    let off = || "off".to_owned();
    out.push_str(&format!(
        "veilnet {} — node {}\n",
        sanitize(&status.version, 32),
        sanitize(&status.peer_id, 80)
    ));
    let fields = [
        ("uptime", human_duration(status.uptime_secs)),
        ("known nodes", status.known_nodes.to_string()),
        ("open circuits", status.open_circuits.to_string()),
        (
            "socks",
            status
                .socks
                .as_deref()
                .map_or_else(off, |s| sanitize(s, 64)),
        ),
        (
            "http proxy",
            status
                .http_proxy
                .as_deref()
                .map_or_else(off, |s| sanitize(s, 64)),
        ),
    ];
    for (name, value) in fields {
        out.push_str(&format!("  {name:<14}{value}\n"));
    }

    out.push_str(&format!("\nNodes ({})\n", nodes.len()));
    if nodes.is_empty() {
        out.push_str("  (none known)\n");
    } else {
        let rows = nodes
            .iter()
            .map(|n| {
                let mark = if n.is_self { "*" } else { " " };
                vec![
                    format!("{mark}{}", short_id(&n.peer_id)),
                    roles(n),
                    or_dash(sanitize(&n.region, 16)),
                    human_bandwidth(n.advertised_bandwidth),
                    n.link_addrs
                        .first()
                        .map_or_else(|| "-".to_owned(), |a| sanitize(a, 48)),
                ]
            })
            .collect();
        out.push_str(&table(
            &[" PEER", "ROLES", "REGION", "BANDWIDTH", "ADDRESS"],
            rows,
        ));
    }

    out.push_str(&format!("\nCircuits ({})\n", circuits.len()));
    if circuits.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows = circuits
            .iter()
            .map(|c| {
                let hops: Vec<String> = c.hops.iter().map(|h| short_id(h)).collect();
                vec![
                    c.id.to_string(),
                    sanitize(&c.state, 12),
                    human_duration(c.age_secs),
                    c.streams.to_string(),
                    c.isolation
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), |i| sanitize(i, 16)),
                    or_dash(hops.join(" → ")),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ID", "STATE", "AGE", "STREAMS", "ISOLATION", "HOPS"],
            rows,
        ));
    }
    out
}

/// Left-aligned columns separated by two spaces, indented by two, with no
/// trailing whitespace.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::from("  ");
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// First 12 characters of a peer id followed by "…" (whole id if shorter).
fn short_id(peer_id: &str) -> String {
    let clean = sanitize(peer_id, usize::MAX);
    if clean.chars().count() <= 12 {
        clean
    } else {
        let mut short: String = clean.chars().take(12).collect();
        short.push('…');
        short
    }
}

fn roles(node: &NodeView) -> String {
    match (node.relay, node.exit) {
        (true, true) => "relay,exit",
        (true, false) => "relay",
        (false, true) => "exit",
        (false, false) => "client",
    }
    .to_owned()
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

/// Replaces control characters (terminal escapes included) with `?` and
/// truncates to `max` characters, marking the cut with "…".
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// Bytes per second in decimal units: "950 B/s", "12.5 MB/s".
fn human_bandwidth(bytes_per_sec: u64) -> String {
    const UNITS: [&str; 6] = ["kB/s", "MB/s", "GB/s", "TB/s", "PB/s", "EB/s"];
    if bytes_per_sec < 1000 {
        return format!("{bytes_per_sec} B/s");
    }
    // Precision loss above 2^53 B/s is irrelevant for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes_per_sec as f64 / 1000.0;
    let mut unit = 0;
    // Round first so 999_999 B/s shows as "1.0 MB/s", not "1000.0 kB/s".
    while (value * 10.0).round() >= 10_000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds as "42s", "1m03s", "2h05m07s" or "3d04h"; "-" if not a sane value.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    // Saturating float-to-int cast; sub-second precision is not shown.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = secs as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{circuits, nodes, status, PEER_A};

    #[test]
    fn render_shows_short_ids_arrows_and_units() {
        let out = render_status(&status(), &nodes(), &circuits());
        println!("{out}");
        assert!(out.contains(PEER_A), "status header names this node");
        assert!(out.contains("*12D3KooWAAAA…"));
        assert!(out.contains("12D3KooWAAAA… → 12D3KooWBBBB… → 12D3KooWCCCC…"));
        assert!(out.contains("12.5 MB/s"));
        assert!(out.contains("999 B/s"));
        assert!(out.contains("2.0 kB/s"));
        assert!(out.contains("relay,exit"));
        assert!(out.contains("1m03s"));
        assert!(out.contains("1h02m03s"));
        assert!(out.contains("192.0.2.1:7000"));
        assert!(
            !out.contains("192.0.2.1:7001"),
            "only the first link address"
        );
        assert!(out.contains("off"), "disabled HTTP proxy");
        assert!(out.lines().all(|l| l == l.trim_end()), "no trailing spaces");
    }

    #[test]
    fn render_neutralises_hostile_strings() {
        let mut hostile = nodes();
        hostile[1].region = "\u{1b}[2J\u{1b}]0;pwned\u{7}".into();
        hostile[1].link_addrs = vec!["x".repeat(500)];
        let out = render_status(&status(), &hostile, &[]);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.lines().all(|l| l.chars().count() < 160));
        assert!(out.contains("(none)"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bandwidth(0), "0 B/s");
        assert_eq!(human_bandwidth(1_000), "1.0 kB/s");
        assert_eq!(human_bandwidth(999_999), "1.0 MB/s");
        assert_eq!(human_bandwidth(u64::MAX), "18.4 EB/s");
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(59.9), "59s");
        assert_eq!(human_duration(60.0), "1m00s");
        assert_eq!(human_duration(90_061.0), "1d01h");
        assert_eq!(human_duration(f64::NAN), "-");
        assert_eq!(human_duration(-1.0), "-");
        assert_eq!(short_id("short"), "short");
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé…");
    }
}
