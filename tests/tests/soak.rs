//! A bounded soak: one daemon, N prepare/run/rm cycles over four alias
//! chains with random edits, `rm --recurse --force` of random states and
//! short-lived named instances, the warm pool on. Sampled after a warm-up,
//! every 50 cycles and at the end; at the end nothing may have leaked:
//! PostgreSQL servers, the daemon's file descriptors and memory, state and
//! instance folders (btrfs subvolumes), disk space, server run folders and,
//! once the daemon stopped, any process under the sandbox.
//!
//! `SQLRS_SOAK_CYCLES` (default 150) sets N, `SQLRS_SOAK_SEED` the seed of
//! the random choices (printed either way, so a failing run can be repeated).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sqlrs_e2e::{
    Backend, Sandbox, field, find_key, ids, json_list, postgres_servers_under, prepared_from,
    processes_under,
};

/// Cycles before the first sample: every chain built once, the pool filled.
const WARM_UP: usize = 10;
/// A sample every this many cycles (and one at the end).
const SAMPLE_EVERY: usize = 50;
/// How much the daemon's file descriptors may grow between the warm-up
/// sample and the end (server pidfds aside, which are checked exactly):
/// a connection being torn down, a log file reopened, a watch added.
const FD_SLACK: usize = 10;
/// How much the daemon's resident memory may grow between the warm-up
/// sample and the end. The daemon idles at 14–21 MiB; what legitimately
/// grows with cycles is bounded: allocator arenas of the tokio worker
/// threads (a few MiB once every path ran), redb's page cache over an index
/// that gains a job with its events per prepare (about 1 MiB per 150 jobs
/// here), and the pool's and watcher's per-state maps (kilobytes). A leak
/// per cycle of even 20 KiB would exceed this over 500 cycles.
const RSS_SLACK_KIB: u64 = 15 * 1024;
/// How long the daemon may take to settle (jobs done, pool filled, expired
/// instances removed) before a sample.
const SETTLE: Duration = Duration::from_secs(90);
/// Values of a file come in this many variants; edits move between them,
/// so some edits return to contents whose states are cached.
const VARIANTS: u32 = 4;

/// One SQL file of the workspace.
struct File {
    path: &'static str,
    table: &'static str,
    /// Whether it creates its table (the first step of a chain).
    creates: bool,
    /// A file it includes with `\i` (an index into the files).
    include: Option<usize>,
}

/// The files, the chains over them (alias name, steps, table) and the
/// current variant of each file.
struct Workspace {
    files: Vec<File>,
    chains: Vec<(&'static str, Vec<usize>, &'static str)>,
    variant: Vec<u32>,
}

impl Workspace {
    fn new() -> Self {
        let file = |path, table, creates, include| File {
            path,
            table,
            creates,
            include,
        };
        let files = vec![
            file("a/schema.sql", "ta", true, None), // 0, shared by a and d
            file("a/seed.sql", "ta", false, None),  // 1
            file("a/more.sql", "ta", false, None),  // 2
            file("b/schema.sql", "tb", true, None), // 3
            file("b/load.sql", "tb", false, Some(5)), // 4: \i b/rows.sql
            file("b/rows.sql", "tb", false, None),  // 5
            file("c/schema.sql", "tc", true, None), // 6
            file("c/one.sql", "tc", false, None),   // 7
            file("c/two.sql", "tc", false, None),   // 8
            file("c/three.sql", "tc", false, None), // 9
            file("d/seed.sql", "ta", false, None),  // 10
        ];
        let chains = vec![
            ("a", vec![0, 1, 2], "ta"),
            ("b", vec![3, 4], "tb"),
            ("c", vec![6, 7, 8, 9], "tc"),
            ("d", vec![0, 10], "ta"),
        ];
        let variant = vec![0; files.len()];
        Self {
            files,
            chains,
            variant,
        }
    }

    /// The values file `i` inserts in variant `v`: one to three of them,
    /// different in every variant, so an edit changes the count or the sum.
    fn values(i: usize, v: u32) -> Vec<i64> {
        let n = 1 + (v % 3) as i64;
        (0..n)
            .map(|k| 100 * (i as i64 + 1) + 7 * v as i64 + k)
            .collect()
    }

    fn render(&self, i: usize) -> String {
        let f = &self.files[i];
        let v = self.variant[i];
        let mut text = format!("-- {} variant {v}\n", f.path);
        if f.creates {
            text.push_str(&format!("create table {}(v int not null);\n", f.table));
        }
        if let Some(inc) = f.include {
            text.push_str(&format!("\\i {}\n", self.files[inc].path));
        }
        let rows: Vec<String> = Self::values(i, v)
            .iter()
            .map(|x| format!("({x})"))
            .collect();
        text.push_str(&format!(
            "insert into {} values {};\n",
            f.table,
            rows.join(", ")
        ));
        text
    }

    fn write(&self, sb: &Sandbox, i: usize) {
        sb.write(self.files[i].path, &self.render(i));
    }

    fn write_all(&self, sb: &Sandbox) {
        sb.sqlrs_ok(&["init"]);
        for i in 0..self.files.len() {
            self.write(sb, i);
        }
        for (name, steps, _) in &self.chains {
            let args: Vec<String> = steps
                .iter()
                .map(|&i| format!("-f, {}", self.files[i].path))
                .collect();
            sb.write(
                &format!("{name}.prep.s9s.yaml"),
                &format!("kind: psql\nargs: [{}]\n", args.join(", ")),
            );
        }
    }

    /// Every file chain `c` reads: its steps and what they include.
    fn files_of(&self, c: usize) -> Vec<usize> {
        let mut all = Vec::new();
        for &i in &self.chains[c].1 {
            all.push(i);
            if let Some(inc) = self.files[i].include {
                all.push(inc);
            }
        }
        all
    }

    /// The query of chain `c` and what it must answer now.
    fn expected(&self, c: usize) -> (String, String) {
        let values: Vec<i64> = self
            .files_of(c)
            .iter()
            .flat_map(|&i| Self::values(i, self.variant[i]))
            .collect();
        let query = format!(
            "select count(*) || ':' || coalesce(sum(v), 0) from {}",
            self.chains[c].2
        );
        let want = format!("{}:{}", values.len(), values.iter().sum::<i64>());
        (query, want)
    }
}

/// xorshift64*: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_number(var: &str) -> Option<u64> {
    std::env::var(var).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{var}={v:?} is not a number: {e}"))
    })
}

/// One reading of the daemon and the store.
#[derive(Debug, Clone)]
struct Sample {
    cycle: usize,
    elapsed: Duration,
    rss_kib: u64,
    /// Open descriptors of the daemon, all of them.
    fds: usize,
    /// Of those, pidfds (one per server the daemon started and watches).
    pidfds: usize,
    /// Children of the daemon that exited and were not reaped.
    zombies: usize,
    threads: u64,
    /// PostgreSQL servers (postmasters) under the sandbox, and all their
    /// processes.
    servers: usize,
    pg_processes: usize,
    /// Instances `ls` lists (running, building) and warm ones (`ls --warm`).
    instances: usize,
    warm: usize,
    states: usize,
    store_bytes: u64,
    index_bytes: u64,
    /// What the warm servers use together, as the pool measures it.
    pool_memory_bytes: u64,
    /// Taken after every instance and state was removed.
    emptied: bool,
}

impl Sample {
    fn other_fds(&self) -> usize {
        self.fds - self.pidfds
    }

    fn line(&self) -> String {
        let at = if self.emptied {
            "emptied   ".to_owned()
        } else {
            format!("cycle {:>4}", self.cycle)
        };
        format!(
            "soak: {at}  {:>6.1}s  rss {:>6} KiB  fds {:>3} ({} pidfds)  threads {:>2}  postgres {:>2} servers / {:>3} processes  instances {:>2} + {:>2} warm ({:.0} MiB)  states {:>3}  store {:>6.1} MiB (index {:.1} MiB)",
            self.elapsed.as_secs_f64(),
            self.rss_kib,
            self.fds,
            self.pidfds,
            self.threads,
            self.servers,
            self.pg_processes,
            self.instances,
            self.warm,
            self.pool_memory_bytes as f64 / (1 << 20) as f64,
            self.states,
            self.store_bytes as f64 / (1 << 20) as f64,
            self.index_bytes as f64 / (1 << 20) as f64,
        )
    }
}

/// What the soak does with one daemon.
struct Soak<'a> {
    sb: &'a Sandbox,
    ws: Workspace,
    rng: Rng,
    started: Instant,
    /// Server run folders seen (outside the store when its path is long);
    /// none may outlive its instance.
    run_dirs: BTreeSet<PathBuf>,
    counts: BTreeMap<&'static str, usize>,
    checked_queries: usize,
}

impl<'a> Soak<'a> {
    fn store(&self) -> PathBuf {
        self.sb.state_dir()
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    /// Remembers where the server of `instance` keeps its socket (line 5 of
    /// postmaster.pid).
    fn note_run_dir(&mut self, instance: &str) {
        let pid_file = self
            .store()
            .join("instances")
            .join(instance)
            .join("data/postmaster.pid");
        if let Some(dir) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.lines().nth(4).map(str::to_owned))
            .filter(|d| !d.trim().is_empty())
        {
            self.run_dirs.insert(PathBuf::from(dir.trim()));
        }
    }

    fn check(&mut self, c: usize, got: &str, how: &str) {
        let (query, want) = self.ws.expected(c);
        assert_eq!(
            got.trim(),
            want,
            "{how} of chain {}: `{query}` after the files changed to variants {:?}\n--- sqlrsd.log (tail)\n{}",
            self.ws.chains[c].0,
            self.ws.variant,
            self.sb.daemon_log_tail()
        );
        self.checked_queries += 1;
    }

    /// `prepare NAME`, `run:psql --instance ID -- -c QUERY` checked against
    /// the files, `rm ID`.
    fn prepare_run_rm(&mut self, c: usize) {
        let name = self.ws.chains[c].0;
        let p = prepared_from(self.sb.json(&["prepare", name]));
        self.note_run_dir(&p.instance_id);
        let (query, _) = self.ws.expected(c);
        let out = self.sb.sqlrs_ok(&[
            "run:psql",
            "--instance",
            &p.instance_id,
            "--",
            "-A",
            "-t",
            "-c",
            &query,
        ]);
        self.check(c, &out.stdout, "run:psql --instance");
        self.sb.sqlrs_ok(&["rm", &p.instance_id]);
    }

    /// The composite `prepare NAME run:psql -- -c QUERY`.
    fn composite(&mut self, c: usize) {
        let name = self.ws.chains[c].0;
        let (query, _) = self.ws.expected(c);
        let out = self
            .sb
            .sqlrs_ok(&["prepare", name, "run:psql", "--", "-A", "-t", "-c", &query]);
        self.check(c, &out.stdout, "prepare NAME run:psql");
    }

    /// Rewrites a random file of chain `c` to another variant, then
    /// prepares it (a partial rebuild, or a cache hit when the variant was
    /// built before).
    fn edit(&mut self, c: usize) {
        let files = self.ws.files_of(c);
        let i = files[self.rng.below(files.len())];
        let v = self.ws.variant[i];
        self.ws.variant[i] = (v + 1 + self.rng.below(VARIANTS as usize - 1) as u32) % VARIANTS;
        self.ws.write(self.sb, i);
        self.prepare_run_rm(c);
    }

    /// `rm --recurse --force` of a random state (the base included).
    fn rm_state(&mut self) {
        let states = self.sb.state_ids();
        if states.is_empty() {
            return;
        }
        let id = states[self.rng.below(states.len())].clone();
        let out = self.sb.sqlrs(&["rm", "--recurse", "--force", &id]);
        if out.success() {
            return;
        }
        // Refused while a build runs on it or a descendant (by design: "cancel
        // the job instead"); a prebuild of an edited alias may be running. A
        // build server whose job has ended is caught by `settle`.
        assert!(
            out.text().contains("build server of running job"),
            "{}",
            self.sb.explain(&out)
        );
        self.count("rm --recurse --force refused during a build");
    }

    /// `prepare NAME --name soak-NAME --ttl 1s`: the instance is checked
    /// while it lives and left to expire.
    fn named_short_lived(&mut self, c: usize) {
        let name = self.ws.chains[c].0;
        let instance_name = format!("soak-{name}");
        let json = self
            .sb
            .json(&["prepare", name, "--name", &instance_name, "--ttl", "1s"]);
        let expires = find_key(&json, "expires_at_ms").and_then(Value::as_u64);
        let p = prepared_from(json);
        self.note_run_dir(&p.instance_id);
        let (query, _) = self.ws.expected(c);
        let out = self.sb.psql(&p.dsn, &["-A", "-t", "-c", &query]);
        if out.success() {
            self.check(c, &out.stdout, "prepare --name --ttl 1s");
        } else {
            // Only an instance past its time to live may be gone already.
            assert!(
                expires.is_some_and(|e| e <= now_ms()),
                "the named instance {} (expires at {expires:?}, now {}) does not answer:\n{out}\n{}",
                p.instance_id,
                now_ms(),
                self.sb.daemon_log_tail()
            );
            self.count("named instance expired before its query");
        }
    }

    fn cycle(&mut self) {
        let c = self.rng.below(self.ws.chains.len());
        match self.rng.below(100) {
            0..35 => {
                self.count("prepare, run:psql --instance, rm");
                self.prepare_run_rm(c);
            }
            35..55 => {
                self.count("prepare NAME run:psql");
                self.composite(c);
            }
            55..80 => {
                self.count("edit, prepare, run:psql, rm");
                self.edit(c);
            }
            80..88 => {
                self.count("rm --recurse --force STATE");
                self.rm_state();
            }
            _ => {
                self.count("prepare --name --ttl 1s");
                self.named_short_lived(c);
            }
        }
    }

    fn daemon_pid(&self) -> i32 {
        let status = self.sb.json(&["daemon", "status"]);
        find_key(&status, "pid")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("no daemon pid in {status:#}")) as i32
    }

    /// Waits until no job runs, the pool starts nothing, and the servers
    /// under the sandbox are exactly those of the listed and warm instances;
    /// returns the instances (`ls --warm`).
    fn settle(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let jobs = self.sb.ls("jobs");
            let failed: Vec<String> = jobs
                .iter()
                .filter(|j| field(j, "status") == "failed")
                .map(|j| {
                    format!(
                        "{} {} ({}): {}",
                        field(j, "kind"),
                        field(j, "id"),
                        field(j, "summary"),
                        j.get("error").map(Value::to_string).unwrap_or_default()
                    )
                })
                .collect();
            // Every file is valid SQL: a build may be cancelled (a newer
            // edit supersedes a prebuild), never fail.
            assert!(
                failed.is_empty(),
                "jobs failed: {failed:#?}\n--- sqlrsd.log (tail)\n{}",
                self.sb.daemon_log_tail()
            );
            let live: BTreeSet<&str> = jobs
                .iter()
                .filter(|j| !matches!(field(j, "status"), "succeeded" | "failed" | "cancelled"))
                .map(|j| field(j, "id"))
                .collect();
            let busy: Vec<String> = jobs
                .iter()
                .filter(|j| live.contains(field(j, "id")))
                .map(|j| {
                    format!(
                        "{} {} {}",
                        field(j, "id"),
                        field(j, "kind"),
                        field(j, "status")
                    )
                })
                .collect();
            let status = self.sb.json(&["status"]);
            let starting = find_key(&status, "pool")
                .and_then(|p| p.get("starting"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let listed = json_list(&self.sb.json(&["ls", "--warm"]), "instances");
            let servers = postgres_servers_under(self.sb.root());
            let running: BTreeSet<PathBuf> = servers.iter().map(|s| s.data_dir.clone()).collect();
            let expected: BTreeSet<PathBuf> = listed
                .iter()
                .map(|i| PathBuf::from(field(i, "data_dir")))
                .collect();
            for i in &listed {
                self.note_run_dir(field(i, "id"));
            }
            // Instances with a time to live (1 s here) are waited out, so
            // that none goes while the sample is taken.
            let expiring: Vec<&str> = listed
                .iter()
                .filter(|i| i.get("expires_at_ms").is_some_and(|e| !e.is_null()))
                .map(|i| field(i, "id"))
                .collect();
            // A build server belongs to a running job: once its job ended
            // (succeeded, failed or cancelled) it is handed out or gone.
            let orphans: Vec<String> = listed
                .iter()
                .filter(|i| field(i, "status") == "building")
                .filter(|i| !live.contains(field(i, "job_id")))
                .map(|i| format!("{} (job {})", field(i, "id"), field(i, "job_id")))
                .collect();
            if busy.is_empty()
                && starting == 0
                && expiring.is_empty()
                && orphans.is_empty()
                && running == expected
            {
                return listed;
            }
            if Instant::now() > deadline {
                let extra: Vec<_> = running.difference(&expected).collect();
                let missing: Vec<_> = expected.difference(&running).collect();
                panic!(
                    "the daemon did not settle within {SETTLE:?}: jobs not finished {busy:?}, pool starting {starting}, \
                     instances past their time to live still there {expiring:?}; \
                     build servers of jobs no longer running (leaked) {orphans:?}; \
                     servers without an instance (leaked): {extra:#?}; instances without a server: {missing:#?}\n\
                     instances: {listed:#?}\n--- sqlrsd.log (tail)\n{}",
                    self.sb.daemon_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Settles, reads the daemon and the store, checks that the folders
    /// (and btrfs subvolumes) of the store are those of listed states and
    /// instances, prints the sample.
    fn sample(&mut self, cycle: usize, emptied: bool) -> Sample {
        let listed = self.settle();
        let states = self.sb.state_ids();
        let instance_ids: Vec<String> = ids(&listed);
        self.check_store_layout(&states, &instance_ids);
        let pid = self.daemon_pid();
        // The CLI's own connection may still be closing: take the lowest of
        // a few readings.
        let (fds, watched, zombies) = (0..5)
            .map(|k| {
                if k > 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let (fds, watched) = fd_counts(pid);
                (fds, watched, zombie_children(pid))
            })
            .min()
            .expect("readings");
        let servers = postgres_servers_under(self.sb.root());
        // Every server the daemon started is watched through a pidfd, and
        // every pidfd watches a running server.
        let server_pids: BTreeSet<i32> = servers.iter().map(|s| s.pid).collect();
        let unwatched: Vec<_> = servers
            .iter()
            .filter(|s| !watched.contains(&s.pid))
            .collect();
        let stale: Vec<_> = watched
            .iter()
            .filter(|p| !server_pids.contains(p))
            .collect();
        assert!(
            unwatched.is_empty() && stale.is_empty(),
            "servers the daemon holds no pidfd for: {unwatched:#?}; pidfds of processes that are not running servers (leaked): {stale:?}\ninstances: {listed:#?}\n--- sqlrsd.log (tail)\n{}",
            self.sb.daemon_log_tail()
        );
        let pidfds = watched.len();
        let (rss_kib, threads) = status_numbers(pid);
        let status = self.sb.json(&["status"]);
        let pool_memory_bytes = find_key(&status, "pool")
            .and_then(|p| p.get("memory_bytes"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let store = self.store();
        let sample = Sample {
            cycle,
            elapsed: self.started.elapsed(),
            rss_kib,
            fds,
            pidfds,
            zombies,
            threads,
            servers: servers.len(),
            pg_processes: servers.iter().map(|s| s.processes).sum(),
            instances: listed
                .iter()
                .filter(|i| field(i, "status") != "warm")
                .count(),
            warm: listed
                .iter()
                .filter(|i| field(i, "status") == "warm")
                .count(),
            states: states.len(),
            store_bytes: du(&store),
            index_bytes: du(&store.join("index.redb")),
            emptied,
            pool_memory_bytes,
        };
        println!("{}", sample.line());
        assert_eq!(
            sample.zombies,
            0,
            "children of the daemon left unreaped: {}",
            sample.line()
        );
        sample
    }

    /// The entries of `states/` and `instances/` are exactly the listed
    /// states and instances; on btrfs, so are the subvolumes.
    fn check_store_layout(&self, states: &[String], instances: &[String]) {
        let store = self.store();
        let names = |dir: &str| -> BTreeSet<String> {
            std::fs::read_dir(store.join(dir))
                .unwrap_or_else(|e| panic!("{}: {e}", store.join(dir).display()))
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        let want_states: BTreeSet<String> = states.iter().cloned().collect();
        let want_instances: BTreeSet<String> = instances.iter().cloned().collect();
        assert_eq!(
            names("states"),
            want_states,
            "states/ holds exactly the listed states"
        );
        assert_eq!(
            names("instances"),
            want_instances,
            "instances/ holds exactly the listed (and warm) instances"
        );
        if self.sb.backend() == Backend::Btrfs {
            let mut want: BTreeSet<String> = states.iter().map(|s| format!("states/{s}")).collect();
            want.extend(instances.iter().map(|i| format!("instances/{i}/data")));
            let got = subvolumes_under(&store);
            assert_eq!(
                got, want,
                "the btrfs subvolumes under the store are those of listed states and instances"
            );
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The daemon's open descriptors: how many, and the processes its pidfds
/// refer to (`Pid:` in fdinfo; -1 for one that exited).
fn fd_counts(pid: i32) -> (usize, Vec<i32>) {
    let dir = format!("/proc/{pid}/fd");
    let fds: Vec<(std::ffi::OsString, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            (e.file_name(), target)
        })
        .collect();
    let mut watched: Vec<i32> = fds
        .iter()
        .filter(|(_, target)| target.to_string_lossy().contains("[pidfd]"))
        .filter_map(|(fd, _)| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
                    .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("Pid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    watched.sort_unstable();
    (fds.len(), watched)
}

/// Children of `pid` that exited and were not reaped (state `Z`).
fn zombie_children(pid: i32) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let mut fields = stat
                .rsplit_once(") ")
                .map(|(_, rest)| rest.split_whitespace())
                .into_iter()
                .flatten();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
            state == Some("Z") && ppid == Some(pid)
        })
        .count()
}

/// VmRSS (KiB) and the thread count from `/proc/PID/status`.
fn status_numbers(pid: i32) -> (u64, u64) {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let number = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {path}"))
    };
    (number("VmRSS:"), number("Threads:"))
}

/// Disk blocks under `path` (like `du -s --block-size=1`, each inode once).
fn du(path: &Path) -> u64 {
    fn walk(path: &Path, seen: &mut BTreeSet<(u64, u64)>) -> u64 {
        let Ok(meta) = path.symlink_metadata() else {
            return 0;
        };
        let mut total = 0;
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                total += walk(&entry.path(), seen);
            }
        }
        total
    }
    walk(path, &mut BTreeSet::new())
}

/// The btrfs subvolumes under `store`, as paths relative to it, from
/// `btrfs subvolume list` (every subvolume of the filesystem, whatever
/// folder it hides in).
fn subvolumes_under(store: &Path) -> BTreeSet<String> {
    let out = {
        let mut c = Command::new("btrfs");
        c.args(["subvolume", "list", "-a"]).arg(store);
        sqlrs_e2e::run(c, Duration::from_secs(60))
    };
    assert!(out.success(), "{out}");
    // Listed paths are relative to the filesystem's top level; the
    // sandbox's folder name is unique, so the store is found by its tail.
    let root_name = store
        .ancestors()
        .nth(2)
        .and_then(Path::file_name)
        .expect("the sandbox folder")
        .to_string_lossy()
        .into_owned();
    let marker = format!("{root_name}/state/sqlrs/");
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(" path ").map(|(_, p)| p.trim()))
        .filter_map(|p| p.find(&marker).map(|at| p[at + marker.len()..].to_owned()))
        .collect()
}

fn soak(backend: Backend) {
    let cycles = env_number("SQLRS_SOAK_CYCLES").unwrap_or(150) as usize;
    assert!(
        cycles > WARM_UP,
        "SQLRS_SOAK_CYCLES={cycles}: more than the {WARM_UP} warm-up cycles, please"
    );
    // Without a seed given, each backend gets its own.
    let seed = env_number("SQLRS_SOAK_SEED")
        .unwrap_or_else(|| now_ms() ^ 0x9E37_79B9_7F4A_7C15 ^ (backend as u64) << 40)
        | 1;
    println!(
        "soak ({}): {cycles} cycles, seed {seed} (SQLRS_SOAK_SEED={seed} repeats it)",
        backend.name()
    );
    let sb = Sandbox::new(backend);
    let ws = Workspace::new();
    ws.write_all(&sb);
    let mut soak = Soak {
        sb: &sb,
        ws,
        rng: Rng(seed),
        started: Instant::now(),
        run_dirs: BTreeSet::new(),
        counts: BTreeMap::new(),
        checked_queries: 0,
    };
    // Warm-up: every chain once, then random cycles.
    for c in 0..soak.ws.chains.len() {
        soak.prepare_run_rm(c);
    }
    for _ in soak.ws.chains.len()..WARM_UP {
        soak.cycle();
    }
    let first = soak.sample(WARM_UP, false);
    let mut samples = vec![first.clone()];
    for n in WARM_UP + 1..=cycles {
        soak.cycle();
        if n % SAMPLE_EVERY == 0 && n != cycles {
            samples.push(soak.sample(n, false));
        }
    }
    let last = soak.sample(cycles, false);
    samples.push(last.clone());
    let loop_time = last.elapsed - first.elapsed;
    println!(
        "soak ({}): {} cycles after the warm-up in {:.1}s ({:.0} cycles/min); {} query results checked; {:?}",
        backend.name(),
        cycles - WARM_UP,
        loop_time.as_secs_f64(),
        (cycles - WARM_UP) as f64 / loop_time.as_secs_f64() * 60.0,
        soak.checked_queries,
        soak.counts
    );

    let rss_peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "soak ({}): rss {} → {} KiB (peak {rss_peak}), fds {} → {} (without pidfds {} → {})",
        backend.name(),
        first.rss_kib,
        last.rss_kib,
        first.fds,
        last.fds,
        first.other_fds(),
        last.other_fds()
    );
    assert!(
        last.other_fds() <= first.other_fds() + FD_SLACK,
        "the daemon's descriptors (pidfds aside) grew from {} to {}: {}",
        first.other_fds(),
        last.other_fds(),
        last.line()
    );
    assert!(
        last.rss_kib <= first.rss_kib + RSS_SLACK_KIB,
        "the daemon's RSS grew from {} to {} KiB (bound +{RSS_SLACK_KIB} KiB)",
        first.rss_kib,
        last.rss_kib
    );

    // Everything removed: instances, then every root state (with its
    // descendants and warm instances).
    for id in sb.instance_ids() {
        sb.sqlrs_ok(&["rm", "--force", &id]);
    }
    for state in sb.ls("states") {
        if state.get("parent_id").is_none_or(Value::is_null) {
            sb.sqlrs_ok(&["rm", "--recurse", "--force", field(&state, "id")]);
        }
    }
    // The pool lets go of warm instances of removed states by itself (one
    // may have been starting while its state went): give it a few upkeep
    // rounds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = json_list(&sb.json(&["ls", "--warm"]), "instances");
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instances left 30 s after every instance and root state was removed: {left:#?}\n--- sqlrsd.log (tail)\n{}",
            sb.daemon_log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let empty = soak.sample(cycles, true);
    let store = sb.state_dir();
    assert_eq!(
        (empty.states, empty.instances, empty.warm, empty.servers),
        (0, 0, 0, 0),
        "after removing every instance and root state: {}",
        empty.line()
    );
    for dir in ["states", "instances", "work"] {
        let left: Vec<_> = std::fs::read_dir(store.join(dir))
            .unwrap_or_else(|e| panic!("{}: {e}", store.join(dir).display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{dir}/ is not empty: {left:#?}");
    }
    let blobs = du(&store.join("blobs"));
    println!(
        "soak ({}): emptied: store {} KiB, of it blobs {} KiB and index {} KiB; fds {} (without pidfds {}), rss {} KiB",
        backend.name(),
        empty.store_bytes / 1024,
        blobs / 1024,
        empty.index_bytes / 1024,
        empty.fds,
        empty.other_fds(),
        empty.rss_kib
    );
    assert!(
        empty.other_fds() <= first.other_fds() + FD_SLACK,
        "the emptied daemon's descriptors grew from {} to {}",
        first.other_fds(),
        empty.other_fds()
    );
    // Inputs (a few KiB of SQL) stay in the blob store and jobs in the
    // index; nothing of a state or an instance may.
    assert!(
        empty.store_bytes < 16 << 20,
        "the emptied store still takes {} KiB",
        empty.store_bytes / 1024
    );
    let leftover_runs: Vec<&PathBuf> = soak.run_dirs.iter().filter(|d| d.exists()).collect();
    assert!(
        leftover_runs.is_empty(),
        "server run folders outlived their instances: {leftover_runs:#?}"
    );

    sb.sqlrs_ok(&["daemon", "stop"]);
    let left = processes_under(sb.root());
    assert!(
        left.is_empty(),
        "processes left under {} after `daemon stop`: {:?}",
        sb.root().display(),
        left.iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " "))
            .collect::<Vec<_>>()
    );
    println!(
        "soak ({}): done in {:.1}s",
        backend.name(),
        soak.started.elapsed().as_secs_f64()
    );
}

mod prepare_run_rm_cycles_leak_nothing {
    #[test]
    fn copy() {
        super::soak(sqlrs_e2e::Backend::Copy)
    }

    #[test]
    fn btrfs() {
        super::soak(sqlrs_e2e::Backend::Btrfs)
    }
}
