//! How results look on a terminal: short ids, relative times, durations,
//! sizes, tables, the state tree, and JSON on stdout (where the protocol's
//! empty strings and zero times become nulls).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{Table, presets};
use serde::Serialize;

/// Hex characters shown for an id in tables and trees.
pub const SHORT_ID: usize = 12;

/// The first `len` characters of an id.
pub fn short(id: &str, len: usize) -> &str {
    id.get(..len).unwrap_or(id)
}

/// Now, in Unix milliseconds (the protocol's timestamps).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "3m ago" for a moment before `now_ms`; "-" when the moment is unknown (0).
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0 => "just now".into(),
        1..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..172_800 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// "in 45s", "in 12m", "in 1h 59m", "in 2d 3h" until a moment after
/// `now_ms` (rounded down); "expired" once it passed; "-" when never (0).
pub fn until(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".into();
    }
    if then_ms <= now_ms {
        return "expired".into();
    }
    let secs = (then_ms - now_ms) / 1000;
    match secs {
        0..60 => format!("in {secs}s"),
        60..3600 => format!("in {}m", secs / 60),
        3600..172_800 => format!("in {}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("in {}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A protocol string for JSON: None when empty.
pub fn some_text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A protocol timestamp for JSON: None when unset (0).
pub fn some_time(ms: u64) -> Option<u64> {
    (ms != 0).then_some(ms)
}

/// "0.4s", "1.2s", "2m05s", "1h02m".
pub fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{}.{}s", secs, (ms % 1000) / 100),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// "12.3 MiB".
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// A borderless table with a header row, like `docker ps`.
pub fn table<const N: usize>(
    header: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    for row in rows {
        table.add_row(row);
    }
    let text = table.to_string();
    // The preset pads every cell; trailing blanks are noise in a terminal.
    text.lines()
        .map(|l| l.trim_end().get(1..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One node of a drawn tree: its id, its parent's id, and its columns.
pub struct TreeNode {
    pub id: String,
    /// Empty (or unknown among the nodes) for a root.
    pub parent: String,
    /// Sorts siblings.
    pub order: u64,
    /// The first column is drawn behind the branch lines; all are aligned.
    pub columns: Vec<String>,
}

/// Draws a forest like `tree`: roots at the left edge, children under
/// `├── ` / `└── ` with `│   ` continuing open branches; columns aligned.
pub fn tree(nodes: &[TreeNode]) -> String {
    let known: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut children: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let parent = known.get(node.parent.as_str()).copied().filter(|&p| p != i);
        children.entry(parent).or_default().push(i);
    }
    for list in children.values_mut() {
        list.sort_by(|&a, &b| (nodes[a].order, &nodes[a].id).cmp(&(nodes[b].order, &nodes[b].id)));
    }
    let mut lines: Vec<(String, usize)> = Vec::new();
    let mut stack: Vec<(usize, String, String)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .map(|&i| (i, String::new(), String::new()))
        .collect();
    let mut seen = vec![false; nodes.len()];
    while let Some((i, branch, indent)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        lines.push((branch, i));
        let kids = children
            .get(&Some(i))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (k, &child) in kids.iter().enumerate().rev() {
            let last = k + 1 == kids.len();
            let branch = format!("{indent}{}", if last { "└── " } else { "├── " });
            let deeper = format!("{indent}{}", if last { "    " } else { "│   " });
            stack.push((child, branch, deeper));
        }
    }
    let columns = nodes.iter().map(|n| n.columns.len()).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for (branch, i) in &lines {
        for (c, text) in nodes[*i].columns.iter().enumerate() {
            let lead = if c == 0 { branch.chars().count() } else { 0 };
            widths[c] = widths[c].max(lead + text.chars().count());
        }
    }
    let mut out = String::new();
    for (branch, i) in &lines {
        let mut line = String::new();
        for (c, text) in nodes[*i].columns.iter().enumerate() {
            let cell = if c == 0 {
                format!("{branch}{text}")
            } else {
                text.clone()
            };
            let pad = widths[c].saturating_sub(cell.chars().count());
            line.push_str(&cell);
            line.push_str(&" ".repeat(pad + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = 1_000_000_000_000;
        let cases = [
            (0, "-"),
            (now, "just now"),
            (now + 5_000, "just now"),
            (now - 999, "just now"),
            (now - 1_000, "1s ago"),
            (now - 59_999, "59s ago"),
            (now - 60_000, "1m ago"),
            (now - 3 * 60_000 - 30_000, "3m ago"),
            (now - 3_600_000, "1h ago"),
            (now - 47 * 3_600_000, "47h ago"),
            (now - 48 * 3_600_000, "2d ago"),
            (now - 400 * 86_400_000, "400d ago"),
        ];
        for (then, want) in cases {
            assert_eq!(ago(now, then), want, "{then}");
        }
    }

    #[test]
    fn times_to_come() {
        let now = 1_000_000_000_000;
        let cases = [
            (0, "-"),
            (now, "expired"),
            (now - 5_000, "expired"),
            (now + 999, "in 0s"),
            (now + 45_000, "in 45s"),
            (now + 60_000, "in 1m"),
            (now + 12 * 60_000 + 59_000, "in 12m"),
            (now + 2 * 3_600_000 - 1, "in 1h 59m"),
            (now + 2 * 3_600_000, "in 2h 0m"),
            (now + 47 * 3_600_000 + 5 * 60_000, "in 47h 5m"),
            (now + 51 * 3_600_000, "in 2d 3h"),
        ];
        for (then, want) in cases {
            assert_eq!(until(now, then), want, "{then}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            (0, "0.0s"),
            (420, "0.4s"),
            (1_234, "1.2s"),
            (59_999, "59.9s"),
            (125_000, "2m05s"),
            (3_720_000, "1h02m"),
        ];
        for (ms, want) in cases {
            assert_eq!(duration(ms), want, "{ms}");
        }
    }

    #[test]
    fn sizes_and_ids() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(12_897_485), "12.3 MiB");
        assert_eq!(short("0123456789abcdef", SHORT_ID), "0123456789ab");
        assert_eq!(short("abc", SHORT_ID), "abc");
    }

    fn node(id: &str, parent: &str, order: u64, summary: &str) -> TreeNode {
        TreeNode {
            id: id.into(),
            parent: parent.into(),
            order,
            columns: vec![id.into(), summary.into(), format!("{order} MiB")],
        }
    }

    #[test]
    fn state_forest() {
        let nodes = [
            node("c1", "b1", 3, "-f seed.sql"),
            node("b1", "a", 2, "-f schema.sql"),
            node("a", "", 1, "base"),
            node("b2", "a", 4, "-c 'create table t()'"),
            node("c2", "b1", 5, "-f more.sql"),
            node("d1", "c1", 6, "-f deep.sql"),
            node("z", "", 0, "base pg16"),
            node("orphan", "gone", 7, "-f lost.sql"),
        ];
        let want = "\
z               base pg16              0 MiB
a               base                   1 MiB
├── b1          -f schema.sql          2 MiB
│   ├── c1      -f seed.sql            3 MiB
│   │   └── d1  -f deep.sql            6 MiB
│   └── c2      -f more.sql            5 MiB
└── b2          -c 'create table t()'  4 MiB
orphan          -f lost.sql            7 MiB
";
        assert_eq!(tree(&nodes), want);
        assert_eq!(tree(&[]), "");
    }

    #[test]
    fn tables_have_no_borders() {
        let text = table(
            ["ID", "STATUS"],
            [
                ["abc".to_string(), "running".to_string()],
                ["d".into(), "stopped".into()],
            ],
        );
        assert_eq!(text, "ID   STATUS\nabc  running\nd    stopped");
    }
}
