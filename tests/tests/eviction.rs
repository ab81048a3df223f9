//! The bounded cache through the CLI against real PostgreSQL: usage with
//! blocks shared through copy-on-write counted once, eviction of the least
//! valuable unreferenced states under `cache.max_bytes`, pins, and a clear
//! failure (with nothing cached lost) when nothing can be freed.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlrs_e2e::{Backend, Sandbox, find_key, find_str, prepared_from};

/// About 40 MB of table: big enough to dwarf what PostgreSQL rewrites
/// around it (WAL, catalog pages), small enough to build in a second.
const BIG: &str =
    "create table big as select g, repeat('x', 200) as t from generate_series(1, 150000) g";

/// The sandbox's config plus cache settings (no warm pool: warm instances
/// would add copies of states that the arithmetic below leaves out).
fn configure(sb: &Sandbox, cache: &str) {
    let base = std::fs::read_to_string(sb.config_path()).expect("sandbox config");
    let base: String = base
        .lines()
        .take_while(|l| !l.starts_with("pool:"))
        .map(|l| format!("{l}\n"))
        .collect();
    sb.set_config(&format!(
        "{base}pool:\n  per_state: 0\ncache:\n  min_age: 0s\n  reserve_bytes: 1MiB\n  check_interval: 1h\n{cache}"
    ));
}

fn restart(sb: &Sandbox) {
    sb.sqlrs_ok(&["daemon", "stop"]);
    sb.sqlrs_ok(&["daemon", "start"]);
}

fn cache(sb: &Sandbox) -> Value {
    let status = sb.json(&["status", "--cache"]);
    find_key(&status, "cache")
        .unwrap_or_else(|| panic!("status --cache has no cache: {status:#}"))
        .clone()
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number `{key}` in {v:#}"))
}

/// `ls --states --cache-details`, keyed by state id.
fn details(sb: &Sandbox) -> Vec<Value> {
    let doc = sb.json(&["ls", "--states", "--cache-details"]);
    sqlrs_e2e::json_list(&doc, "states")
}

fn detail(sb: &Sandbox, id: &str) -> Value {
    details(sb)
        .into_iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("state {id} is not listed"))
}

/// Builds one step on the base, BIG and a `tag` of its own, and removes
/// the instance at once, so nothing but the cache holds the state (a child
/// of the base with some 40 MB of its own); returns it. The half-second
/// sleep gives every step the same floor of build time, so that use counts,
/// not the noise of a loaded machine, decide which state is worth least.
fn build(sb: &Sandbox, tag: &str) -> String {
    let step = format!("{BIG}; select pg_sleep(0.5), '{tag}'");
    let prepared = prepared_from(sb.json(&["prepare:psql", "--", "-c", &step]));
    sb.sqlrs_ok(&["rm", "--force", &prepared.instance_id]);
    prepared.state_id
}

fn wait_for_eviction(sb: &Sandbox) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = cache(sb);
        if c.get("last_eviction").is_some_and(|e| !e.is_null()) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no eviction within 60 s: {c:#}\n{}",
            sb.daemon_log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn shared_blocks_count_once(backend: Backend) {
    let sb = Sandbox::new(backend);
    configure(&sb, "");
    let head = sb.prepare(&["-c", BIG, "-c", "insert into big values (0, 'y')"]);
    let states = details(&sb);
    assert_eq!(states.len(), 3, "base, big, insert: {states:#?}");
    let own: u64 = states.iter().map(|s| num(s, "own_bytes")).sum();
    let apparent: u64 = states.iter().map(|s| num(s, "size_bytes")).sum();
    let c = cache(&sb);
    let used = num(&c, "states_bytes");
    let top = detail(&sb, &head.state_id);
    let (top_own, top_exclusive) = (num(&top, "own_bytes"), num(&top, "exclusive_bytes"));
    eprintln!(
        "{}: apparent {apparent}, own {own}, counted once {used}; head own {top_own}, exclusive {top_exclusive}",
        backend.name()
    );
    assert!(top_own > 30 << 20, "the head holds the big table: {top:#}");
    match backend {
        Backend::Copy => {
            // Nothing is shared: every state is a full copy.
            assert!(used * 10 >= own * 9, "{used} vs {own}");
            assert!(top_exclusive * 10 >= top_own * 9, "{top:#}");
        }
        Backend::Btrfs | Backend::Reflink => {
            // The big table is stored once for the two states that hold it,
            // and the base's files are shared with both.
            assert!(
                used * 10 <= own * 6,
                "shared blocks counted more than once: {used} of {own}"
            );
            assert!(
                top_exclusive * 4 <= top_own,
                "the head shares its parent's blocks: {top:#}"
            );
        }
    }
    assert_eq!(
        find_str(&top, "protected"),
        Some("1 instance(s)"),
        "the head has the prepared instance: {top:#}"
    );
}

#[test]
fn shared_blocks_count_once_on_btrfs() {
    shared_blocks_count_once(Backend::Btrfs);
}

#[test]
fn shared_blocks_count_once_on_reflink() {
    shared_blocks_count_once(Backend::Reflink);
}

#[test]
fn full_copies_count_in_full() {
    shared_blocks_count_once(Backend::Copy);
}

/// Three sibling states under a limit that holds two: the least valuable
/// goes (least recently and least often used), a pinned one stays.
fn evicts_the_least_valuable(backend: Backend) {
    let sb = Sandbox::new(backend);
    configure(&sb, "");
    let a = build(&sb, "a");
    let base_and_a = num(&cache(&sb), "used_bytes");
    let e = num(&detail(&sb, &a), "exclusive_bytes") + (1 << 20);
    let max = base_and_a + e * 19 / 10;
    configure(&sb, &format!("  max_bytes: {max}\n"));
    restart(&sb);

    let b = build(&sb, "b");
    // a again: used five times as often as b, and more recently.
    for _ in 0..4 {
        assert_eq!(build(&sb, "a"), a);
    }
    let before = cache(&sb);
    assert!(
        before["last_eviction"].is_null() && before["pressure"] != "full",
        "two states fit: {before:#}"
    );
    let c = build(&sb, "c");
    let after = wait_for_eviction(&sb);
    let evicted: Vec<&str> = after["last_eviction"]["state_ids"]
        .as_array()
        .expect("state_ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(evicted, [b.as_str()], "{after:#}");
    assert!(num(&after, "used_bytes") <= max, "{after:#}");
    let ids = sb.state_ids();
    assert!(
        ids.contains(&a) && ids.contains(&c) && !ids.contains(&b),
        "{ids:?}"
    );

    // Pinned, a stays although it is now worth less than c (used more).
    for _ in 0..5 {
        build(&sb, "c");
    }
    sb.sqlrs_ok(&["pin", &a]);
    let pins = sb.json(&["pin"]);
    assert!(pins.to_string().contains(&a), "{pins:#}");
    assert_eq!(find_str(&detail(&sb, &a), "protected"), Some("pinned"));
    restart(&sb); // forgets the last eviction
    let d = build(&sb, "d");
    let after = wait_for_eviction(&sb);
    let evicted = after["last_eviction"]["state_ids"].to_string();
    assert!(evicted.contains(&c) && !evicted.contains(&a), "{after:#}");
    let ids = sb.state_ids();
    assert!(
        ids.contains(&a) && ids.contains(&d) && !ids.contains(&c),
        "{ids:?}"
    );
    // The base stays: a and d are its children.
    assert_eq!(ids.len(), 3, "{ids:?}");
    let unpinned = sb.json(&["unpin", &a]);
    assert_eq!(unpinned["changed"], true, "{unpinned:#}");
}

#[test]
fn evicts_the_least_valuable_on_copy() {
    evicts_the_least_valuable(Backend::Copy);
}

#[test]
fn evicts_the_least_valuable_on_btrfs() {
    evicts_the_least_valuable(Backend::Btrfs);
}

#[test]
fn a_full_cache_fails_the_step_and_keeps_what_it_has() {
    let sb = Sandbox::new(Backend::Copy);
    configure(&sb, "");
    // An instance of a small state keeps it (and the base) from eviction.
    let kept = sb.prepare(&[
        "-c",
        "create table kept(v int); insert into kept values (7)",
    ]);
    let used = num(&cache(&sb), "used_bytes");
    configure(&sb, &format!("  max_bytes: {}\n", used + (16 << 20)));
    restart(&sb);

    let args = [
        "--output",
        "json",
        "prepare:psql",
        "--",
        "-c",
        BIG,
        "-c",
        "insert into big values (0, 'y')",
    ];
    let failed = sb.sqlrs(&args);
    assert_eq!(failed.code, Some(3), "{}", sb.explain(&failed));
    let doc = failed.json();
    assert_eq!(find_str(&doc, "reason"), Some("cache_full"), "{doc:#}");
    let message = find_str(&doc, "message").unwrap_or_default();
    for want in ["cache.max_bytes", "sqlrs rm", "sqlrs unpin"] {
        assert!(message.contains(want), "{want:?} in {message}");
    }
    assert_eq!(
        find_key(&doc, "step").and_then(Value::as_u64),
        Some(2),
        "{doc:#}"
    );
    let plan = sb.plan(&["-c", BIG, "-c", "insert into big values (0, 'y')"]);
    assert!(plan[0].cached, "the first step's state is kept");
    assert!(
        !plan[1].cached,
        "nothing was cached for the step that failed"
    );
    assert_eq!(
        sb.query(&kept.dsn, "select v from kept"),
        "7",
        "the running instance is untouched"
    );
    assert_eq!(cache(&sb)["pressure"], "full");
    // Room made by hand: the same prepare goes through.
    sb.sqlrs_ok(&["rm", "--force", &kept.instance_id]);
    sb.sqlrs_ok(&["rm", &kept.state_id]);
    configure(&sb, &format!("  max_bytes: {}\n", used * 4 + (200 << 20)));
    restart(&sb);
    let ok = sb.sqlrs(&args);
    assert!(ok.success(), "{}", sb.explain(&ok));
}

/// The head of a watched alias and of a pinned alias are kept; a pinned
/// alias follows its chain to the new head after an edit.
#[test]
fn watched_and_pinned_alias_heads_are_kept() {
    let sb = Sandbox::new(Backend::Copy);
    configure(&sb, "");
    restart(&sb);
    // A watched workspace with alias `db`, and `keep` in a subfolder.
    sb.sqlrs_ok(&["init"]);
    sb.write("db.prep.s9s.yaml", "kind: psql\nargs: [-f, db.sql]\n");
    sb.write("db.sql", "create table d(v int);\n");
    sb.write(
        "other/keep.prep.s9s.yaml",
        "kind: psql\nargs: [-f, keep.sql]\n",
    );
    sb.write("other/keep.sql", "create table k(v int);\n");
    let db = prepared_from(sb.json(&["prepare", "db"]));
    sb.sqlrs_ok(&["rm", "--force", &db.instance_id]);
    let other_dir = sb.project().join("other");
    let keep = prepared_from(sb.json_in(&other_dir, &["prepare", "keep"]));
    sb.sqlrs_ok(&["rm", "--force", &keep.instance_id]);
    let loose = build(&sb, "loose");
    sb.sqlrs_ok(&["watch"]);
    let pinned = sb.sqlrs_in(&other_dir, &["pin", "keep"]);
    assert!(pinned.success(), "{}", sb.explain(&pinned));
    assert!(pinned.stdout.contains("pinned alias"), "{pinned}");

    let protected = |id: &str| find_str(&detail(&sb, id), "protected").map(str::to_owned);
    let deadline = Instant::now() + Duration::from_secs(60);
    while protected(&db.state_id).as_deref() != Some("head of a watched alias") {
        assert!(
            Instant::now() < deadline,
            "the watched head is not protected: {:?}",
            detail(&sb, &db.state_id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let keep_protection = protected(&keep.state_id).unwrap_or_default();
    assert!(
        keep_protection.starts_with("head of pinned alias")
            && keep_protection.ends_with("keep.prep.s9s.yaml"),
        "{keep_protection}"
    );
    assert_eq!(
        protected(&loose),
        None,
        "an unreferenced state is evictable"
    );

    // The pin follows the alias to its new head.
    sb.write("other/keep.sql", "create table k(v int, w int);\n");
    let edited = prepared_from(sb.json_in(&other_dir, &["prepare", "keep"]));
    sb.sqlrs_ok(&["rm", "--force", &edited.instance_id]);
    let now = protected(&edited.state_id).unwrap_or_default();
    assert!(now.starts_with("head of pinned alias"), "{now}");
    assert_eq!(
        protected(&keep.state_id),
        None,
        "the old head is free again"
    );
    let pins = sb.json(&["pin"]);
    assert_eq!(pins.as_array().map(Vec::len), Some(1), "{pins:#}");
    let gone = sb.sqlrs_in(&other_dir, &["unpin", "keep"]);
    assert!(gone.success() && gone.stdout.contains("unpinned"), "{gone}");
}
