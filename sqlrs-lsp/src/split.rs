//! Splitting a SQL document into statements the way psql does: `;` ends a
//! statement outside comments, quotes, dollar-quoted bodies, parentheses and
//! `BEGIN ATOMIC … END` bodies; a line starting with `\` is a meta-command.

use std::ops::Range;

/// What a statement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SQL sent to the server.
    Sql,
    /// A psql meta-command line (`\d`, `\i file`, …).
    Meta,
}

/// One statement of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub kind: Kind,
    /// Byte range in the document: from the first character that is neither
    /// white space nor comment, to the end of the terminating `;` (or of the
    /// last such character when there is none; the end of the line for a
    /// meta-command).
    pub range: Range<usize>,
}

/// Every statement of `text`, in order. Comments and white space between
/// statements belong to none.
pub fn split(text: &str) -> Vec<Statement> {
    Splitter::new(text).run()
}

/// The statement a 0-based `line` belongs to: the one spanning it, else the
/// next one after it, else the last one before it.
pub fn statement_at_line<'a>(
    text: &str,
    statements: &'a [Statement],
    line: u32,
) -> Option<&'a Statement> {
    let line = line as usize;
    let line_of = |offset: usize| text[..offset].bytes().filter(|b| *b == b'\n').count();
    statements
        .iter()
        .find(|s| line_of(s.range.start) <= line && line <= line_of(s.range.end))
        .or_else(|| statements.iter().find(|s| line_of(s.range.start) > line))
        .or_else(|| statements.last())
}

struct Splitter<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    out: Vec<Statement>,
    /// Start of the statement being read, once it has code.
    start: Option<usize>,
    /// End of its last code character.
    code_end: usize,
    parens: u32,
    /// Depth of `BEGIN ATOMIC … END` (and `CASE … END` inside it).
    atomic: u32,
    /// Its first words, upper-cased (to recognise CREATE FUNCTION/PROCEDURE).
    words: Vec<String>,
}

impl<'a> Splitter<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            out: Vec::new(),
            start: None,
            code_end: 0,
            parens: 0,
            atomic: 0,
            words: Vec::new(),
        }
    }

    fn run(mut self) -> Vec<Statement> {
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            match b {
                b'\\' if self.at_line_start() => self.meta_command(),
                b'-' if self.peek(1) == Some(b'-') => self.line_comment(),
                b'/' if self.peek(1) == Some(b'*') => self.block_comment(),
                b'\'' => {
                    let escapes = self.is_escape_string();
                    self.code(self.pos);
                    self.quoted(b'\'', escapes);
                }
                b'"' => {
                    self.code(self.pos);
                    self.quoted(b'"', false);
                }
                b'$' => self.dollar(),
                b'(' => {
                    self.parens += 1;
                    self.single();
                }
                b')' => {
                    self.parens = self.parens.saturating_sub(1);
                    self.single();
                }
                b';' if self.parens == 0 && self.atomic == 0 => {
                    self.code(self.pos);
                    self.pos += 1;
                    self.code_end = self.pos;
                    self.finish();
                }
                _ if b.is_ascii_whitespace() => self.pos += 1,
                _ if is_ident_start(b) => self.word(),
                _ => self.single(),
            }
        }
        self.finish();
        self.out
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    /// Only white space before `pos` on its line.
    fn at_line_start(&self) -> bool {
        self.text[..self.pos]
            .rsplit('\n')
            .next()
            .is_some_and(|before| before.trim().is_empty())
    }

    /// Marks code starting at `at`.
    fn code(&mut self, at: usize) {
        self.start.get_or_insert(at);
    }

    /// One code character (a UTF-8 sequence as a whole).
    fn single(&mut self) {
        self.code(self.pos);
        let len = self.text[self.pos..]
            .chars()
            .next()
            .map_or(1, char::len_utf8);
        self.pos += len;
        self.code_end = self.pos;
    }

    fn finish(&mut self) {
        if let Some(start) = self.start.take() {
            self.out.push(Statement {
                kind: Kind::Sql,
                range: start..self.code_end,
            });
        }
        self.parens = 0;
        self.atomic = 0;
        self.words.clear();
    }

    fn meta_command(&mut self) {
        self.finish();
        let end = self.text[self.pos..]
            .find('\n')
            .map_or(self.bytes.len(), |n| self.pos + n);
        let line_end = self.text[..end].trim_end().len();
        self.out.push(Statement {
            kind: Kind::Meta,
            range: self.pos..line_end,
        });
        self.pos = end;
    }

    fn line_comment(&mut self) {
        self.pos = self.text[self.pos..]
            .find('\n')
            .map_or(self.bytes.len(), |n| self.pos + n);
    }

    /// `/* … */`, nested as PostgreSQL nests them; unterminated runs to the end.
    fn block_comment(&mut self) {
        let mut depth = 0u32;
        while self.pos < self.bytes.len() {
            if self.bytes[self.pos..].starts_with(b"/*") {
                depth += 1;
                self.pos += 2;
            } else if self.bytes[self.pos..].starts_with(b"*/") {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    /// `E'…'` (or `e'…'`): the quote follows a lone E.
    fn is_escape_string(&self) -> bool {
        self.pos >= 1
            && matches!(self.bytes[self.pos - 1], b'E' | b'e')
            && (self.pos < 2 || !is_ident_char(self.bytes[self.pos - 2]))
    }

    /// A literal or identifier closed by `quote` (doubled inside), with
    /// backslash escapes when `escapes`.
    fn quoted(&mut self, quote: u8, escapes: bool) {
        self.pos += 1;
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            if escapes && b == b'\\' {
                self.pos += 2;
            } else if b == quote {
                if self.peek(1) == Some(quote) {
                    self.pos += 2;
                } else {
                    self.pos += 1;
                    break;
                }
            } else {
                self.pos += 1;
            }
        }
        self.pos = self.pos.min(self.bytes.len());
        self.code_end = self.pos;
    }

    /// `$tag$ … $tag$`, or a lone `$` (a parameter like `$1`).
    fn dollar(&mut self) {
        self.code(self.pos);
        let after_ident = self.pos > 0 && is_ident_char(self.bytes[self.pos - 1]);
        let rest = &self.text[self.pos + 1..];
        let tag_len = rest
            .bytes()
            .take_while(|b| is_ident_char(*b) && *b != b'$')
            .count();
        let opens = !after_ident
            && rest.as_bytes().get(tag_len) == Some(&b'$')
            && rest.bytes().next().is_none_or(|b| !b.is_ascii_digit());
        if !opens {
            self.single();
            return;
        }
        let delimiter = &self.text[self.pos..self.pos + tag_len + 2];
        let body = self.pos + delimiter.len();
        self.pos = self.text[body..]
            .find(delimiter)
            .map_or(self.bytes.len(), |n| body + n + delimiter.len());
        self.code_end = self.pos;
    }

    /// A keyword or identifier: tracks `BEGIN ATOMIC … END` in function bodies.
    fn word(&mut self) {
        self.code(self.pos);
        let start = self.pos;
        while self.pos < self.bytes.len() && is_ident_char(self.bytes[self.pos]) {
            self.pos += 1;
        }
        // An E before a quote belongs to the literal that follows.
        if self.bytes.get(self.pos) == Some(&b'\'') && self.pos - start == 1 {
            return;
        }
        self.code_end = self.pos;
        let word = self.text[start..self.pos].to_ascii_uppercase();
        if self.words.len() < 4 {
            self.words.push(word.clone());
        }
        let routine = self.words.first().is_some_and(|w| w == "CREATE")
            && self
                .words
                .iter()
                .any(|w| w == "FUNCTION" || w == "PROCEDURE");
        match word.as_str() {
            "BEGIN" if routine && self.next_word_is("ATOMIC") => self.atomic += 1,
            "CASE" if self.atomic > 0 => self.atomic += 1,
            "END" if self.atomic > 0 => self.atomic -= 1,
            _ => {}
        }
    }

    fn next_word_is(&self, word: &str) -> bool {
        let rest = self.text[self.pos..].trim_start();
        rest.len() >= word.len()
            && rest[..word.len()].eq_ignore_ascii_case(word)
            && rest
                .as_bytes()
                .get(word.len())
                .is_none_or(|b| !is_ident_char(*b))
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements' texts, meta-commands marked with a leading `META `.
    fn texts(text: &str) -> Vec<String> {
        split(text)
            .into_iter()
            .map(|s| match s.kind {
                Kind::Sql => text[s.range].to_owned(),
                Kind::Meta => format!("META {}", &text[s.range]),
            })
            .collect()
    }

    #[test]
    fn statements_table() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("empty", "", &[]),
            ("only comments", "-- a\n/* b */\n", &[]),
            ("two", "select 1;\nselect 2;", &["select 1;", "select 2;"]),
            (
                "no final semicolon",
                "select 1;\nselect 2\n\n",
                &["select 1;", "select 2"],
            ),
            (
                "leading comment is outside",
                "-- header\nselect 1; -- trailing\n",
                &["select 1;"],
            ),
            (
                "comment inside stays",
                "select 1 -- one;\n, 2;",
                &["select 1 -- one;\n, 2;"],
            ),
            (
                "nested block comment",
                "select /* a /* b; */ c; */ 1; select 2;",
                &["select /* a /* b; */ c; */ 1;", "select 2;"],
            ),
            ("literal", "select 'a;b''c';", &["select 'a;b''c';"]),
            (
                "standard literal keeps backslash",
                "select 'a\\'; select 2;",
                &["select 'a\\';", "select 2;"],
            ),
            (
                "escape literal",
                "select E'a\\';b'; select 2;",
                &["select E'a\\';b';", "select 2;"],
            ),
            (
                "lower-case escape literal",
                "select e'\\'';",
                &["select e'\\'';"],
            ),
            (
                "identifier ending in e is no escape",
                "select name'x'; select 2;",
                &["select name'x';", "select 2;"],
            ),
            (
                "quoted identifier",
                "select 1 as \"a;\"\"b\";",
                &["select 1 as \"a;\"\"b\";"],
            ),
            (
                "dollar body",
                "create function f() returns int as $$ select 1; $$ language sql;\nselect f();",
                &[
                    "create function f() returns int as $$ select 1; $$ language sql;",
                    "select f();",
                ],
            ),
            (
                "tagged dollar body with inner dollars",
                "do $body$ begin perform $$x;$$; end $body$;",
                &["do $body$ begin perform $$x;$$; end $body$;"],
            ),
            (
                "parameters are not dollar quotes",
                "select $1; select a$b;",
                &["select $1;", "select a$b;"],
            ),
            (
                "parentheses",
                "create rule r as on insert to t do also (insert into u values (1); delete from v);",
                &[
                    "create rule r as on insert to t do also (insert into u values (1); delete from v);",
                ],
            ),
            (
                "begin atomic",
                "create function f() returns int language sql\nbegin atomic\n  select 1;\n  select case when true then 2 end;\nend;\nselect 3;",
                &[
                    "create function f() returns int language sql\nbegin atomic\n  select 1;\n  select case when true then 2 end;\nend;",
                    "select 3;",
                ],
            ),
            (
                "a transaction's begin is a statement",
                "begin;\nselect 1;\ncommit;",
                &["begin;", "select 1;", "commit;"],
            ),
            (
                "meta-commands",
                "\\set x 1\nselect :x;\n  \\i other.sql\n",
                &["META \\set x 1", "select :x;", "META \\i other.sql"],
            ),
            (
                "meta-command ends an unterminated statement",
                "select 1\n\\g\n",
                &["select 1", "META \\g"],
            ),
            (
                "backslash inside a literal is no meta-command",
                "select '\n\\x\n';",
                &["select '\n\\x\n';"],
            ),
            (
                "unterminated literal runs to the end",
                "select 'abc; select 2;",
                &["select 'abc; select 2;"],
            ),
            (
                "non-ascii",
                "select 'é'; select ü;",
                &["select 'é';", "select ü;"],
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(texts(text), *want, "{name}: {text:?}");
        }
    }

    #[test]
    fn statement_at_line_table() {
        let text = "select 1;\n\nselect\n  2;\n-- end\n";
        let statements = split(text);
        // (line, the statement's text)
        let cases = [
            (0, "select 1;"),
            (1, "select\n  2;"),
            (2, "select\n  2;"),
            (3, "select\n  2;"),
            (4, "select\n  2;"),
            (9, "select\n  2;"),
        ];
        for (line, want) in cases {
            let got = statement_at_line(text, &statements, line).unwrap();
            assert_eq!(&text[got.range.clone()], want, "line {line}");
        }
        assert_eq!(statement_at_line("", &[], 0), None);
    }
}
