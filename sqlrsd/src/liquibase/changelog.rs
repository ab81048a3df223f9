//! Reading one changelog file (XML, YAML, JSON or formatted SQL) into what the
//! closure needs: the files it pulls in (`include`, `includeAll`, `property
//! file`) and the files its changes read (`sqlFile`, `loadData`, …), each
//! with its line, plus every changeset's identity and a digest of its
//! definition. Nothing here touches the file system.

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};

use crate::ids::{Digest, FieldHasher};

/// The changelog formats Liquibase 4.28 recognises, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Xml,
    Yaml,
    Json,
    Sql,
}

impl Format {
    /// The format Liquibase picks for a file name, by its extension.
    pub(crate) fn of(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".xml") {
            Some(Format::Xml)
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Some(Format::Yaml)
        } else if lower.ends_with(".json") {
            Some(Format::Json)
        } else if lower.ends_with(".sql") {
            Some(Format::Sql)
        } else {
            None
        }
    }
}

/// A changelog as the closure sees it.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// `logicalFilePath` of the whole changelog, the name Liquibase records
    /// for its changesets instead of the file's own.
    pub logical_path: Option<String>,
    /// What the changelog refers to, in document order (properties first
    /// defined win, so order matters).
    pub items: Vec<Item>,
    pub changesets: Vec<ChangesetDef>,
}

/// One reference of a changelog, with the (1-based) line it is on, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub line: Option<u32>,
    pub kind: ItemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemKind {
    /// `<property name=… value=…>`; `dbms` limits it to some databases.
    Property {
        name: String,
        value: String,
        dbms: Option<String>,
    },
    /// `<property file=…>`: Java properties read as changelog parameters.
    PropertyFile {
        file: String,
        relative: bool,
        error_if_missing: bool,
    },
    /// `<include file=…>`.
    Include {
        file: String,
        relative: bool,
        error_if_missing: bool,
    },
    /// `<includeAll path=…>`.
    IncludeAll {
        path: String,
        relative: bool,
        error_if_missing: bool,
        min_depth: u32,
        max_depth: u32,
        ends_with: String,
    },
    /// A file a change reads (`sqlFile path`, `loadData file`, `column
    /// valueClobFile`, …), inside changeset `changeset` (an index into
    /// [`Parsed::changesets`]) when it is in one.
    Resource {
        path: String,
        relative: bool,
        changeset: Option<usize>,
    },
}

/// A changeset's identity as written (parameters not yet expanded) and a
/// digest of its whole definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangesetDef {
    pub id: String,
    pub author: String,
    pub logical_path: Option<String>,
    /// `runAlways`: Liquibase runs it again on every update.
    pub run_always: bool,
    pub definition: Digest,
}

/// Why a changelog could not be read; the caller adds the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: Option<u32>,
    pub message: String,
}

/// Reads `text` (the content of a changelog in `format`).
pub(crate) fn parse(format: Format, text: &str) -> Result<Parsed, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::Xml => parse_xml(text),
        Format::Yaml => {
            let value: serde_norway::Value =
                serde_norway::from_str(text).map_err(|e| SyntaxError {
                    line: e.location().map(|l| line_u32(l.line())),
                    message: e.to_string(),
                })?;
            Ok(parse_tree(&Tree::from_yaml(&value), text))
        }
        Format::Json => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| SyntaxError {
                line: Some(line_u32(e.line())),
                message: e.to_string(),
            })?;
            Ok(parse_tree(&Tree::from_json(&value), text))
        }
        Format::Sql => Ok(parse_sql(text)),
    }
}

fn line_u32(line: usize) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX)
}

/// One element of a changelog, whatever its format: its name, its scalar
/// attributes and where it is.
struct Node<'a> {
    name: &'a str,
    attrs: Vec<(String, String)>,
    line: Option<u32>,
    changeset: Option<usize>,
}

impl Node<'_> {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str, default: bool) -> bool {
        match self.attr(name) {
            Some(v) => v.trim().eq_ignore_ascii_case("true"),
            None => default,
        }
    }

    fn number(&self, name: &str, default: u32) -> u32 {
        self.attr(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default)
    }

    /// The reference this element makes, if it makes one.
    fn item(&self) -> Option<Item> {
        let relative = self.flag("relativeToChangelogFile", false);
        let kind = match self.name {
            "include" => ItemKind::Include {
                file: self.attr("file")?.to_owned(),
                relative,
                error_if_missing: self.flag("errorIfMissing", true),
            },
            "includeAll" => ItemKind::IncludeAll {
                path: self.attr("path")?.to_owned(),
                relative,
                error_if_missing: self.flag("errorIfMissingOrEmpty", true),
                min_depth: self.number("minDepth", 1),
                max_depth: self.number("maxDepth", u32::MAX),
                ends_with: self.attr("endsWithFilter").unwrap_or("").trim().to_owned(),
            },
            "property" => match self.attr("file") {
                Some(file) => ItemKind::PropertyFile {
                    file: file.to_owned(),
                    relative,
                    error_if_missing: self.flag("errorIfMissing", true),
                },
                None => ItemKind::Property {
                    name: self.attr("name")?.to_owned(),
                    value: self.attr("value").unwrap_or("").to_owned(),
                    dbms: self.attr("dbms").map(str::to_owned),
                },
            },
            "sqlFile" | "createProcedure" | "createView" => ItemKind::Resource {
                path: self.attr("path")?.to_owned(),
                relative,
                changeset: self.changeset,
            },
            "loadData" | "loadUpdateData" => ItemKind::Resource {
                path: self.attr("file")?.to_owned(),
                relative,
                changeset: self.changeset,
            },
            _ => {
                // Large-object files of `column`s: always next to the changelog.
                let path = ["valueClobFile", "valueBlobFile"]
                    .iter()
                    .find_map(|a| self.attr(a))?;
                ItemKind::Resource {
                    path: path.to_owned(),
                    relative: true,
                    changeset: self.changeset,
                }
            }
        };
        Some(Item {
            line: self.line,
            kind,
        })
    }
}

fn parse_xml(text: &str) -> Result<Parsed, SyntaxError> {
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let lines = LineIndex::new(text);
    let mut out = Parsed::default();
    // The changeset being read: its index and where its start tag begins.
    let mut open: Option<(usize, usize)> = None;
    loop {
        let start = offset(reader.buffer_position());
        let event = reader.read_event().map_err(|e| SyntaxError {
            line: Some(lines.line(offset(reader.error_position()))),
            message: e.to_string(),
        })?;
        let (element, empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                if e.local_name().as_ref() == "changeSet"
                    && let Some((index, from)) = open.take()
                {
                    let end = offset(reader.buffer_position());
                    out.changesets[index].definition = Digest::of(&text.as_bytes()[from..end]);
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = element.local_name().as_ref().to_owned();
        let node = xml_node(&element, &name, lines.line(start), open.map(|o| o.0))?;
        match name.as_str() {
            "changeSet" => {
                let end = offset(reader.buffer_position());
                let index = out.changesets.len();
                out.changesets.push(ChangesetDef {
                    id: node.attr("id").unwrap_or("").to_owned(),
                    author: node.attr("author").unwrap_or("").to_owned(),
                    logical_path: node.attr("logicalFilePath").map(str::to_owned),
                    run_always: node.flag("runAlways", false),
                    definition: Digest::of(&text.as_bytes()[start..end]),
                });
                open = (!empty).then_some((index, start));
            }
            "databaseChangeLog" => {
                out.logical_path = node.attr("logicalFilePath").map(str::to_owned);
            }
            _ => out.items.extend(node.item()),
        }
    }
    Ok(out)
}

fn offset(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

fn xml_node<'n>(
    e: &BytesStart<'_>,
    name: &'n str,
    line: u32,
    changeset: Option<usize>,
) -> Result<Node<'n>, SyntaxError> {
    let syntax = |message: String| SyntaxError {
        line: Some(line),
        message,
    };
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|err| syntax(err.to_string()))?;
        let key = attr.key.local_name().as_ref().to_owned();
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| syntax(err.to_string()))?;
        attrs.push((key, value.into_owned()));
    }
    Ok(Node {
        name,
        attrs,
        line: Some(line),
        changeset,
    })
}

/// Byte offsets of line starts, to turn an offset into a 1-based line.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex(starts)
    }

    fn line(&self, offset: usize) -> u32 {
        let index = self.0.partition_point(|&s| s <= offset);
        u32::try_from(index.max(1)).unwrap_or(u32::MAX)
    }
}

/// YAML and JSON changelogs as one tree (JSON is read by Liquibase's YAML
/// parser too): maps keep their order.
#[derive(Debug)]
enum Tree {
    Map(Vec<(String, Tree)>),
    List(Vec<Tree>),
    Scalar(String),
    Null,
}

impl Tree {
    fn from_yaml(v: &serde_norway::Value) -> Tree {
        use serde_norway::Value;
        match v {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Scalar(b.to_string()),
            Value::Number(n) => Tree::Scalar(n.to_string()),
            Value::String(s) => Tree::Scalar(s.clone()),
            Value::Sequence(items) => Tree::List(items.iter().map(Tree::from_yaml).collect()),
            Value::Mapping(map) => Tree::Map(
                map.iter()
                    .map(|(k, v)| (yaml_key(k), Tree::from_yaml(v)))
                    .collect(),
            ),
            Value::Tagged(tagged) => Tree::from_yaml(&tagged.value),
        }
    }

    fn from_json(v: &serde_json::Value) -> Tree {
        use serde_json::Value;
        match v {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Scalar(b.to_string()),
            Value::Number(n) => Tree::Scalar(n.to_string()),
            Value::String(s) => Tree::Scalar(s.clone()),
            Value::Array(items) => Tree::List(items.iter().map(Tree::from_json).collect()),
            Value::Object(map) => Tree::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Tree::from_json(v)))
                    .collect(),
            ),
        }
    }

    fn scalar(&self) -> Option<&str> {
        match self {
            Tree::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn hash(&self, h: &mut FieldHasher) {
        match self {
            Tree::Null => {
                h.field(b"null");
            }
            Tree::Scalar(s) => {
                h.field(b"scalar").field(s.as_bytes());
            }
            Tree::List(items) => {
                h.field(b"list").field(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.hash(h);
                }
            }
            Tree::Map(entries) => {
                h.field(b"map").field(&(entries.len() as u64).to_le_bytes());
                for (k, v) in entries {
                    h.field(k.as_bytes());
                    v.hash(h);
                }
            }
        }
    }
}

fn yaml_key(k: &serde_norway::Value) -> String {
    match k {
        serde_norway::Value::String(s) => s.clone(),
        other => Tree::from_yaml(other).scalar().unwrap_or("").to_owned(),
    }
}

/// Walks a YAML/JSON changelog: every map under a key is an element named
/// by the key, its scalar entries the attributes.
struct TreeWalk<'t> {
    out: Parsed,
    locator: Locator<'t>,
    changeset: Option<usize>,
}

fn parse_tree(tree: &Tree, text: &str) -> Parsed {
    let mut walk = TreeWalk {
        out: Parsed::default(),
        locator: Locator::new(text),
        changeset: None,
    };
    walk.visit(None, tree);
    walk.out
}

impl TreeWalk<'_> {
    fn visit(&mut self, key: Option<&str>, tree: &Tree) {
        match tree {
            Tree::List(items) => {
                for item in items {
                    self.visit(None, item);
                }
            }
            Tree::Map(entries) => {
                let outer = self.changeset;
                match key {
                    Some(name) => self.element(name, tree, entries),
                    None if self.changeset.is_none() => {
                        if let Some(path) = entries
                            .iter()
                            .find(|(k, _)| k == "logicalFilePath")
                            .and_then(|(_, v)| v.scalar())
                        {
                            self.out.logical_path = Some(path.to_owned());
                        }
                    }
                    None => {}
                }
                for (k, v) in entries {
                    if matches!(v, Tree::Map(_) | Tree::List(_)) {
                        self.visit(Some(k), v);
                    }
                }
                self.changeset = outer;
            }
            Tree::Scalar(_) | Tree::Null => {}
        }
    }

    fn element(&mut self, name: &str, tree: &Tree, entries: &[(String, Tree)]) {
        let attrs: Vec<(String, String)> = entries
            .iter()
            .filter_map(|(k, v)| v.scalar().map(|s| (k.clone(), s.to_owned())))
            .collect();
        let attr = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        if name == "changeSet" {
            let mut h = FieldHasher::new("lb-changeset-definition");
            tree.hash(&mut h);
            let id = attr("id").unwrap_or_default();
            self.locator.find(&id);
            self.changeset = Some(self.out.changesets.len());
            self.out.changesets.push(ChangesetDef {
                id,
                author: attr("author").unwrap_or_default(),
                logical_path: attr("logicalFilePath"),
                run_always: attr("runAlways").is_some_and(|v| v.eq_ignore_ascii_case("true")),
                definition: h.finish(),
            });
            return;
        }
        let mut node = Node {
            name,
            attrs,
            line: None,
            changeset: self.changeset,
        };
        if let Some(mut item) = node.item() {
            let needle = match &item.kind {
                ItemKind::Property { name, .. } => name.clone(),
                ItemKind::PropertyFile { file, .. } | ItemKind::Include { file, .. } => {
                    file.clone()
                }
                ItemKind::IncludeAll { path, .. } | ItemKind::Resource { path, .. } => path.clone(),
            };
            node.line = self.locator.find(&needle);
            item.line = node.line;
            self.out.items.push(item);
        }
    }
}

/// Finds the line of a value in YAML/JSON text, searching forward from the
/// previous hit (elements come in document order) and from the top if that fails.
struct Locator<'t> {
    text: &'t str,
    lines: LineIndex,
    cursor: usize,
}

impl<'t> Locator<'t> {
    fn new(text: &'t str) -> Self {
        Locator {
            text,
            lines: LineIndex::new(text),
            cursor: 0,
        }
    }

    fn find(&mut self, needle: &str) -> Option<u32> {
        if needle.is_empty() {
            return None;
        }
        let at = self.text[self.cursor..]
            .find(needle)
            .map(|i| i + self.cursor)
            .or_else(|| self.text.find(needle))?;
        self.cursor = at + needle.len();
        Some(self.lines.line(at))
    }
}

/// A formatted SQL changelog (`--liquibase formatted sql`): its changesets
/// are `--changeset author:id` sections; 4.28 has no include in this format.
/// A `.sql` file without the header is one raw changeset (`raw` by `includeAll`).
fn parse_sql(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let first = text.lines().next().unwrap_or("");
    if !is_formatted_header(first) {
        out.changesets.push(ChangesetDef {
            id: "raw".into(),
            author: "includeAll".into(),
            logical_path: None,
            run_always: false,
            definition: Digest::of(text.as_bytes()),
        });
        return out;
    }
    out.logical_path = sql_logical_path(first);
    // (start offset, changeset) of each `--changeset` line.
    let mut sections: Vec<(usize, ChangesetDef)> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some((author, id)) = changeset_line(line) {
            sections.push((
                offset,
                ChangesetDef {
                    id,
                    author,
                    logical_path: sql_logical_path(line),
                    run_always: line.to_ascii_lowercase().contains("runalways:true"),
                    definition: Digest([0; 32]),
                },
            ));
        }
        offset += line.len();
    }
    let ends: Vec<usize> = sections
        .iter()
        .skip(1)
        .map(|(start, _)| *start)
        .chain([text.len()])
        .collect();
    for ((start, mut def), end) in sections.into_iter().zip(ends) {
        def.definition = Digest::of(&text.as_bytes()[start..end]);
        out.changesets.push(def);
    }
    out
}

/// `^\s*--\s*liquibase\s*formatted.*` (case-insensitive).
fn is_formatted_header(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix("--") else {
        return false;
    };
    let rest = rest.trim_start().to_ascii_lowercase();
    rest.strip_prefix("liquibase")
        .is_some_and(|r| r.trim_start().starts_with("formatted"))
}

/// `\s*--\s*changeset\s+("[^"]+"|[^:]+):\s*("[^"]+"|\S+).*` (case-insensitive),
/// giving (author, id) without their quotes.
fn changeset_line(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix("--")?.trim_start();
    let keyword = rest.get(..9)?;
    if !keyword.eq_ignore_ascii_case("changeset") {
        return None;
    }
    let rest = &rest[9..];
    if !rest.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let rest = rest.trim_start();
    let (author, rest) = if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        (&quoted[..end], quoted[end + 1..].strip_prefix(':')?)
    } else {
        let end = rest.find(':')?;
        (&rest[..end], &rest[end + 1..])
    };
    let rest = rest.trim_start();
    let id = if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"')?]
    } else {
        rest.split_whitespace().next()?
    };
    Some((author.to_owned(), id.to_owned()))
}

/// `logicalFilePath:(\S*)` on a header or changeset line.
fn sql_logical_path(line: &str) -> Option<String> {
    let at = line.find("logicalFilePath:")?;
    let value = line[at + "logicalFilePath:".len()..]
        .split_whitespace()
        .next()
        .unwrap_or("");
    (!value.is_empty()).then(|| value.to_owned())
}
