//! Finds psql meta-commands (`\i`, `\copy`, `\set`, …) in a script the way
//! psql's lexer does: outside string literals, quoted identifiers, comments
//! and dollar-quoted bodies, at the start of a line or after SQL on it, and
//! skipping the data lines that follow a `COPY … FROM STDIN`.

/// One backslash command: its line (1-based), name, and the raw text of its
/// arguments (up to the end of the line or the next unquoted backslash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Meta<'a> {
    pub line: u32,
    pub name: &'a [u8],
    pub args: &'a [u8],
}

/// Commands whose argument is the whole rest of the line, backslashes included.
const WHOLE_LINE: &[&[u8]] = &[
    b"copy", b"!", b"ef", b"ev", b"sf", b"sf+", b"sv", b"sv+", b"h", b"help",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Sql,
    /// `'…'`; `escapes` for `E'…'` strings, where `\'` does not end it.
    Quote {
        escapes: bool,
    },
    Ident,
    /// `$tag$ … $tag$`: the delimiter is `src[start..start + len]`.
    Dollar {
        start: usize,
        len: usize,
    },
    Comment {
        depth: u32,
    },
}

/// Whether the statement being read is a `COPY … FROM STDIN`, whose data
/// lines follow it in the script.
#[derive(Debug, Default)]
struct Statement {
    words: u32,
    depth: i32,
    is_copy: bool,
    after_from: bool,
    from_stdin: bool,
}

impl Statement {
    fn word(&mut self, w: &[u8]) {
        if self.depth != 0 {
            return;
        }
        self.words += 1;
        if self.words == 1 {
            self.is_copy = w.eq_ignore_ascii_case(b"copy");
        } else if self.is_copy {
            if self.after_from && w.eq_ignore_ascii_case(b"stdin") {
                self.from_stdin = true;
            }
            self.after_from = w.eq_ignore_ascii_case(b"from");
        }
    }

    fn other(&mut self) {
        self.after_from = false;
    }

    /// Ends the statement; true when data lines follow.
    fn end(&mut self) -> bool {
        let copy_in = self.is_copy && self.from_stdin;
        *self = Statement::default();
        copy_in
    }
}

pub(super) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: u32,
    state: State,
    prev_ident: bool,
    statement: Statement,
    copy_data: bool,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a [u8]) -> Self {
        Lexer {
            src,
            pos: 0,
            line: 1,
            state: State::Sql,
            prev_ident: false,
            statement: Statement::default(),
            copy_data: false,
        }
    }

    /// The data of a `\copy … from stdin` follows the current line.
    pub fn expect_copy_data(&mut self) {
        self.copy_data = true;
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    fn newline(&mut self) {
        self.pos += 1;
        self.line += 1;
        if self.copy_data {
            self.copy_data = false;
            self.skip_copy_data();
        }
    }

    /// Skips lines up to and including a line that is exactly `\.`.
    fn skip_copy_data(&mut self) {
        while self.pos < self.src.len() {
            let rest = &self.src[self.pos..];
            let (line, next) = match rest.iter().position(|&c| c == b'\n') {
                Some(n) => (&rest[..n], self.pos + n + 1),
                None => (rest, self.src.len()),
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.pos = next;
            self.line += 1;
            if line == b"\\." {
                return;
            }
        }
    }

    /// The length of a `$tag$` delimiter starting at `pos`, if there is one.
    fn dollar_tag(&self, pos: usize) -> Option<usize> {
        let mut i = pos + 1;
        if let Some(c) = self.at(i)
            && is_ident_start(c)
        {
            i += 1;
            while let Some(c) = self.at(i) {
                if is_ident_start(c) || c.is_ascii_digit() {
                    i += 1;
                } else {
                    break;
                }
            }
        }
        (self.at(i) == Some(b'$')).then_some(i + 1 - pos)
    }

    /// The next meta-command, or None at the end of the script.
    pub fn next_meta(&mut self) -> Option<Meta<'a>> {
        while self.pos < self.src.len() {
            let c = self.src[self.pos];
            if c == b'\n' {
                self.newline();
                if self.state == State::Sql {
                    self.prev_ident = false;
                }
                continue;
            }
            match self.state {
                State::Sql => {
                    if let Some(meta) = self.sql(c) {
                        return Some(meta);
                    }
                }
                State::Quote { escapes } => {
                    if c == b'\'' {
                        if self.at(self.pos + 1) == Some(b'\'') {
                            self.pos += 2;
                        } else {
                            self.pos += 1;
                            self.state = State::Sql;
                        }
                    } else if c == b'\\' && escapes && self.at(self.pos + 1) != Some(b'\n') {
                        self.pos += 2;
                    } else {
                        self.pos += 1;
                    }
                }
                State::Ident => {
                    self.pos += 1;
                    if c == b'"' {
                        if self.at(self.pos) == Some(b'"') {
                            self.pos += 1;
                        } else {
                            self.state = State::Sql;
                        }
                    }
                }
                State::Dollar { start, len } => {
                    if self.src[self.pos..].starts_with(&self.src[start..start + len]) {
                        self.pos += len;
                        self.state = State::Sql;
                    } else {
                        self.pos += 1;
                    }
                }
                State::Comment { depth } => {
                    let next = self.at(self.pos + 1);
                    if c == b'/' && next == Some(b'*') {
                        self.pos += 2;
                        self.state = State::Comment { depth: depth + 1 };
                    } else if c == b'*' && next == Some(b'/') {
                        self.pos += 2;
                        self.state = match depth {
                            1 => State::Sql,
                            d => State::Comment { depth: d - 1 },
                        };
                    } else {
                        self.pos += 1;
                    }
                }
            }
        }
        None
    }

    /// One step of SQL lexing at `c` (not a newline); returns a meta-command
    /// when one starts here.
    fn sql(&mut self, c: u8) -> Option<Meta<'a>> {
        let next = self.at(self.pos + 1);
        let was_ident = std::mem::replace(&mut self.prev_ident, false);
        match c {
            b'-' if next == Some(b'-') => {
                let rest = &self.src[self.pos..];
                self.pos += rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            }
            b'/' if next == Some(b'*') => {
                self.pos += 2;
                self.state = State::Comment { depth: 1 };
            }
            b'\'' => {
                self.statement.other();
                self.pos += 1;
                self.state = State::Quote { escapes: false };
            }
            b'"' => {
                self.statement.other();
                self.pos += 1;
                self.state = State::Ident;
            }
            b'$' if was_ident => {
                self.pos += 1;
                self.prev_ident = true;
            }
            b'$' => match self.dollar_tag(self.pos) {
                Some(len) => {
                    self.statement.other();
                    self.state = State::Dollar {
                        start: self.pos,
                        len,
                    };
                    self.pos += len;
                }
                None => self.pos += 1,
            },
            b'\\' if matches!(next, Some(b';' | b':')) => self.pos += 2,
            b'\\' => return Some(self.meta()),
            b';' => {
                self.pos += 1;
                self.copy_data |= self.statement.end();
            }
            b'(' | b')' => {
                self.statement.other();
                self.statement.depth += if c == b'(' { 1 } else { -1 };
                self.pos += 1;
            }
            b'e' | b'E' if !was_ident && next == Some(b'\'') => {
                self.statement.other();
                self.pos += 2;
                self.state = State::Quote { escapes: true };
            }
            c if is_ident_start(c) || (was_ident && is_ident_cont(c)) => {
                let start = self.pos;
                while let Some(c) = self.at(self.pos) {
                    if is_ident_cont(c) {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                if !was_ident {
                    self.statement.word(&self.src[start..self.pos]);
                }
                self.prev_ident = true;
            }
            c => {
                if !is_space(c) {
                    self.statement.other();
                }
                self.pos += 1;
            }
        }
        None
    }

    /// Reads a meta-command starting at the backslash at `pos`.
    fn meta(&mut self) -> Meta<'a> {
        let line = self.line;
        self.pos += 1;
        let start = self.pos;
        while let Some(c) = self.at(self.pos) {
            if is_space(c) || c == b'\\' {
                break;
            }
            self.pos += 1;
        }
        let name = &self.src[start..self.pos];
        let eol = self.src[self.pos..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(self.src.len(), |n| self.pos + n);
        let args_start = self.pos;
        if WHOLE_LINE.contains(&name) {
            self.pos = eol;
        } else {
            self.pos = options_end(self.src, self.pos, eol);
            if self.src[self.pos..eol].starts_with(b"\\\\") {
                let args = &self.src[args_start..self.pos];
                self.pos += 2;
                return self.finish_meta(line, name, args);
            }
        }
        let args = &self.src[args_start..self.pos];
        self.finish_meta(line, name, args)
    }

    fn finish_meta(&mut self, line: u32, name: &'a [u8], args: &'a [u8]) -> Meta<'a> {
        match name {
            b"g" | b"gx" => self.copy_data |= self.statement.end(),
            b"r" | b"reset" => {
                self.statement.end();
            }
            _ => {}
        }
        Meta { line, name, args }
    }
}

/// Where the options of a backslash command end: at the first unquoted
/// backslash, or at `eol` (an unterminated quote runs to `eol`).
fn options_end(src: &[u8], mut i: usize, eol: usize) -> usize {
    while i < eol {
        match src[i] {
            b'\\' => return i,
            b'\'' => {
                i += 1;
                while i < eol && src[i] != b'\'' {
                    i += if src[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            q @ (b'"' | b'`') => {
                i += 1;
                while i < eol && src[i] != q {
                    i += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    eol
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metas(src: &str) -> Vec<(u32, String, String)> {
        let mut lexer = Lexer::new(src.as_bytes());
        let mut out = Vec::new();
        while let Some(m) = lexer.next_meta() {
            out.push((
                m.line,
                String::from_utf8_lossy(m.name).into_owned(),
                String::from_utf8_lossy(m.args).into_owned(),
            ));
        }
        out
    }

    #[test]
    fn lexer_table() {
        type Case<'a> = (&'a str, &'a str, &'a [(u32, &'a str, &'a str)]);
        let cases: &[Case] = &[
            ("line start", "\\i a.sql\n", &[(1, "i", " a.sql")]),
            (
                "indented",
                "  \t\\ir  lib/b.sql  \n",
                &[(1, "ir", "  lib/b.sql  ")],
            ),
            (
                "after a statement",
                "select 1; \\i a.sql\nselect 2;\n\\include b.sql",
                &[(1, "i", " a.sql"), (3, "include", " b.sql")],
            ),
            (
                "line comment",
                "-- \\i no.sql\nselect 1; -- \\i no.sql\n",
                &[],
            ),
            (
                "block comment, nested",
                "/* \\i no.sql /* inner */ \\i still_no.sql */ \\i yes.sql",
                &[(1, "i", " yes.sql")],
            ),
            (
                "multi-line block comment",
                "/*\n\\i no.sql\n*/\n\\i yes.sql\n",
                &[(4, "i", " yes.sql")],
            ),
            (
                "string literal",
                "select '\\i no.sql', 'it''s \\i no'; \\i yes.sql",
                &[(1, "i", " yes.sql")],
            ),
            (
                "multi-line string",
                "insert into t values ('a\n\\i no.sql\n');\n\\i yes.sql",
                &[(4, "i", " yes.sql")],
            ),
            (
                "E string with escaped quote",
                "select E'\\' \\i no.sql'; \\i yes.sql",
                &[(1, "i", " yes.sql")],
            ),
            (
                "identifier ending in e is not an E string",
                "select some' \\i inside.sql'; \\i yes.sql",
                &[(1, "i", " yes.sql")],
            ),
            (
                "quoted identifier",
                "create table \"\\i no\"\"x\" (a int); \\i yes.sql",
                &[(1, "i", " yes.sql")],
            ),
            (
                "dollar body",
                "create function f() returns int as $$\n\\i no.sql\nselect 1 $$ language sql;\n\\i yes.sql",
                &[(4, "i", " yes.sql")],
            ),
            (
                "tagged dollar body containing $$",
                "do $body$ begin raise notice '$$ \\i no'; end $body$;\n\\i yes.sql",
                &[(2, "i", " yes.sql")],
            ),
            (
                "identifier with $ is not a dollar quote",
                "select a$b$ from t; \\i yes.sql",
                &[(1, "i", " yes.sql")],
            ),
            (
                "positional parameter",
                "prepare p as select $1; \\i yes.sql",
                &[(1, "i", " yes.sql")],
            ),
            (
                "escaped semicolon and colon",
                "select 1 \\; select 2 \\:x;",
                &[],
            ),
            (
                "double backslash separates commands",
                "\\set a 1 \\\\ \\i b.sql",
                &[(1, "set", " a 1 "), (1, "i", " b.sql")],
            ),
            (
                "backslash ends options",
                "\\i a.sql \\i b.sql",
                &[(1, "i", " a.sql "), (1, "i", " b.sql")],
            ),
            (
                "quoted backslash stays in the option",
                "\\i 'a\\\\b.sql' \\echo x",
                &[(1, "i", " 'a\\\\b.sql' "), (1, "echo", " x")],
            ),
            (
                "copy takes the whole line",
                "\\copy t from 'a.csv' with (delimiter '\\t') \\i no\n\\i yes.sql",
                &[
                    (1, "copy", " t from 'a.csv' with (delimiter '\\t') \\i no"),
                    (2, "i", " yes.sql"),
                ],
            ),
            (
                "COPY FROM STDIN data is skipped",
                "COPY t (a) FROM stdin;\n\\i no.sql\n\\N\t'x\n\\.\n\\i yes.sql\n",
                &[(5, "i", " yes.sql")],
            ),
            (
                "copy with comment and \\g",
                "copy /* c */ t from\n stdin \\g\n\\i no.sql\n\\.\n\\i yes.sql",
                &[(2, "g", ""), (5, "i", " yes.sql")],
            ),
            (
                "COPY TO STDOUT has no data",
                "copy t to stdout;\n\\i yes.sql\n",
                &[(2, "i", " yes.sql")],
            ),
            (
                "copy from stdin inside a query is no data",
                "select (copy) from stdin;\n\\i yes.sql",
                &[(2, "i", " yes.sql")],
            ),
            (
                "CRLF lines",
                "\\i a.sql\r\n\\i b.sql\r\n",
                &[(1, "i", " a.sql\r"), (2, "i", " b.sql\r")],
            ),
        ];
        for (name, src, want) in cases {
            let want: Vec<(u32, String, String)> = want
                .iter()
                .map(|(l, n, a)| (*l, n.to_string(), a.to_string()))
                .collect();
            assert_eq!(metas(src), want, "{name}");
        }
    }

    #[test]
    fn slash_copy_from_stdin_skips_data() {
        let src = b"\\copy t from stdin\n1\t\\i no\n\\.\n\\i yes.sql\n";
        let mut lexer = Lexer::new(src);
        let copy = lexer.next_meta().unwrap();
        assert_eq!(copy.name, b"copy");
        lexer.expect_copy_data();
        let next = lexer.next_meta().unwrap();
        assert_eq!((next.line, next.name), (4, &b"i"[..]));
        assert_eq!(lexer.next_meta(), None);
    }
}
