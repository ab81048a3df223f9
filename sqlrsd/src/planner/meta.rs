//! Arguments of psql meta-commands, read as psql reads them: options with
//! quoting and `:variable` interpolation, and the `\copy` command line.

use std::collections::BTreeMap;

/// psql variables visible while a closure is walked (`-v` then `\set`).
pub(super) type Vars = BTreeMap<Vec<u8>, Vec<u8>>;

/// One option of a backslash command, after quoting and interpolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Opt {
    pub text: Vec<u8>,
    /// It held a backquoted shell command, which psql would run.
    pub backtick: bool,
}

/// The option was cut by the end of the line inside quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unterminated;

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

fn is_var_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// `PQescapeLiteral`: `'…'` with quotes doubled, ` E'…'` when backslashes occur.
fn sql_literal(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    if value.contains(&b'\\') {
        out.extend_from_slice(b" E");
    }
    out.push(b'\'');
    for &c in value {
        if c == b'\'' || c == b'\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push(b'\'');
    out
}

/// `PQescapeIdentifier`: `"…"` with double quotes doubled.
fn sql_ident(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'"');
    for &c in value {
        if c == b'"' {
            out.push(c);
        }
        out.push(c);
    }
    out.push(b'"');
    out
}

/// Reads the options of one backslash command (psql's `OT_NORMAL`).
pub(super) struct Options<'a, 'v> {
    src: &'a [u8],
    pos: usize,
    vars: &'v Vars,
}

impl<'a, 'v> Options<'a, 'v> {
    pub fn new(src: &'a [u8], vars: &'v Vars) -> Self {
        Options { src, pos: 0, vars }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    /// The next option, or None when there is none. `strip_semicolons`
    /// drops unquoted trailing `;` (as psql does for file names).
    pub fn next(&mut self, strip_semicolons: bool) -> Result<Option<Opt>, Unterminated> {
        while self.at(self.pos).is_some_and(is_space) {
            self.pos += 1;
        }
        let mut out = Vec::new();
        let mut quoted = false;
        let mut backtick = false;
        let mut unquoted_tail = 0usize;
        while let Some(c) = self.at(self.pos) {
            match c {
                c if is_space(c) || c == b'\\' => break,
                b'\'' => {
                    quoted = true;
                    unquoted_tail = 0;
                    self.pos += 1;
                    self.single_quoted(&mut out)?;
                }
                b'"' | b'`' => {
                    quoted = true;
                    backtick |= c == b'`';
                    unquoted_tail = 0;
                    let end = self.src[self.pos + 1..]
                        .iter()
                        .position(|&x| x == c)
                        .ok_or(Unterminated)?;
                    let end = self.pos + 1 + end + 1;
                    out.extend_from_slice(&self.src[self.pos..end]);
                    self.pos = end;
                }
                b':' => match self.variable() {
                    Some((len, text)) => {
                        quoted = true;
                        unquoted_tail = 0;
                        out.extend_from_slice(&text);
                        self.pos += len;
                    }
                    None => {
                        out.push(b':');
                        unquoted_tail += 1;
                        self.pos += 1;
                    }
                },
                c => {
                    out.push(c);
                    unquoted_tail += 1;
                    self.pos += 1;
                }
            }
        }
        if strip_semicolons {
            while unquoted_tail > 0 && out.last() == Some(&b';') {
                out.pop();
                unquoted_tail -= 1;
            }
        }
        if out.is_empty() && !quoted {
            return Ok(None);
        }
        Ok(Some(Opt {
            text: out,
            backtick,
        }))
    }

    /// Every remaining option, concatenated (psql's `\set NAME VALUE…`).
    pub fn rest_concatenated(&mut self) -> Result<Vec<u8>, Unterminated> {
        let mut value = Vec::new();
        while let Some(opt) = self.next(false)? {
            value.extend_from_slice(&opt.text);
        }
        Ok(value)
    }

    /// Reads `'…'` after its opening quote, with psql's escapes.
    fn single_quoted(&mut self, out: &mut Vec<u8>) -> Result<(), Unterminated> {
        loop {
            let c = self.at(self.pos).ok_or(Unterminated)?;
            match c {
                b'\'' if self.at(self.pos + 1) == Some(b'\'') => {
                    out.push(b'\'');
                    self.pos += 2;
                }
                b'\'' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.pos += 1;
                    self.escape(out);
                }
                c => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// One escape after a backslash inside `'…'`: `\n \t \b \r \f`, octal,
    /// `\xHH`, or the next character itself.
    fn escape(&mut self, out: &mut Vec<u8>) {
        let Some(c) = self.at(self.pos) else {
            return;
        };
        let digits = |from: usize, max: usize, radix: u32| {
            self.src[from..]
                .iter()
                .take(max)
                .take_while(|d| (**d as char).is_digit(radix))
                .count()
        };
        match c {
            b'n' | b't' | b'b' | b'r' | b'f' => {
                out.push(match c {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'r' => b'\r',
                    _ => 0x0c,
                });
                self.pos += 1;
            }
            b'0'..=b'7' => {
                let n = digits(self.pos, 3, 8);
                let text = std::str::from_utf8(&self.src[self.pos..self.pos + n]).unwrap_or("0");
                out.push(u32::from_str_radix(text, 8).unwrap_or(0) as u8);
                self.pos += n;
            }
            b'x' if digits(self.pos + 1, 2, 16) > 0 => {
                let n = digits(self.pos + 1, 2, 16);
                let text =
                    std::str::from_utf8(&self.src[self.pos + 1..self.pos + 1 + n]).unwrap_or("0");
                out.push(u8::from_str_radix(text, 16).unwrap_or(0));
                self.pos += 1 + n;
            }
            c => {
                out.push(c);
                self.pos += 1;
            }
        }
    }

    /// A variable reference at `pos` (a colon): its length and replacement.
    /// `:name` stays literal when the variable is unknown, like in psql.
    fn variable(&self) -> Option<(usize, Vec<u8>)> {
        let rest = &self.src[self.pos + 1..];
        let name_len = |from: usize| rest[from..].iter().take_while(|c| is_var_char(**c)).count();
        match rest.first()? {
            b'\'' | b'"' => {
                let q = rest[0];
                let n = name_len(1);
                if n == 0 || rest.get(1 + n) != Some(&q) {
                    return None;
                }
                let len = 1 + n + 2;
                let text = match self.vars.get(&rest[1..1 + n]) {
                    Some(v) if q == b'\'' => sql_literal(v),
                    Some(v) => sql_ident(v),
                    None => self.src[self.pos..self.pos + len].to_vec(),
                };
                Some((len, text))
            }
            b'{' if rest.get(1) == Some(&b'?') => {
                let n = name_len(2);
                if n == 0 || rest.get(2 + n) != Some(&b'}') {
                    return None;
                }
                let defined = self.vars.contains_key(&rest[2..2 + n]);
                let text: &[u8] = if defined { b"TRUE" } else { b"FALSE" };
                Some((1 + n + 3, text.to_vec()))
            }
            _ => {
                let n = name_len(0);
                if n == 0 {
                    return None;
                }
                let text = match self.vars.get(&rest[..n]) {
                    Some(v) => v.clone(),
                    None => self.src[self.pos..self.pos + 1 + n].to_vec(),
                };
                Some((1 + n, text))
            }
        }
    }
}

/// Where a `\copy` reads or writes its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CopyTarget {
    /// `from 'file'`: a data file, relative to psql's working directory.
    FromFile(Vec<u8>),
    /// `from stdin`: the lines after the command in the same script.
    FromStdin,
    /// `from pstdin`: psql's own standard input.
    FromPstdin,
    /// `from program '…'`.
    FromProgram,
    /// `to …`: writes only.
    To,
}

/// Splits a `\copy` line into tokens like psql's `strtokx`.
struct Tokens<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn next(&mut self, delims: &[u8], quotes: &[u8]) -> Option<&'a [u8]> {
        while self.src.get(self.pos).is_some_and(|c| is_space(*c)) {
            self.pos += 1;
        }
        let start = self.pos;
        let c = *self.src.get(start)?;
        if delims.contains(&c) {
            self.pos += 1;
        } else if quotes.contains(&c) {
            self.pos += 1;
            while let Some(&x) = self.src.get(self.pos) {
                self.pos += 1;
                if x == c {
                    if self.src.get(self.pos) == Some(&c) {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
            }
        } else {
            while let Some(&x) = self.src.get(self.pos) {
                if is_space(x) || delims.contains(&x) || quotes.contains(&x) {
                    break;
                }
                self.pos += 1;
            }
        }
        Some(&self.src[start..self.pos])
    }
}

/// Removes the quotes of a `'…'` token and undoubles `''`.
fn strip_quotes(token: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    let mut i = 0;
    while i < token.len() {
        if token[i] == b'\'' {
            if token.get(i + 1) == Some(&b'\'') {
                out.push(b'\'');
                i += 2;
            } else {
                i += 1;
            }
        } else {
            out.push(token[i]);
            i += 1;
        }
    }
    out
}

/// Parses `\copy`'s argument line as psql does; Err names what is wrong.
pub(super) fn parse_copy(args: &[u8]) -> Result<CopyTarget, String> {
    const NAME_DELIMS: &[u8] = b".,()";
    let mut t = Tokens { src: args, pos: 0 };
    let at = |tok: Option<&[u8]>| match tok {
        Some(tok) => format!("parse error at \"{}\"", String::from_utf8_lossy(tok)),
        None => "parse error at end of line".to_owned(),
    };
    let mut tok = t.next(NAME_DELIMS, b"\"").ok_or_else(|| at(None))?;
    if tok.eq_ignore_ascii_case(b"binary") {
        tok = t.next(NAME_DELIMS, b"\"").ok_or_else(|| at(None))?;
    }
    if tok == b"(" {
        let mut depth = 1;
        while depth > 0 {
            match t.next(NAME_DELIMS, b"\"'").ok_or_else(|| at(None))? {
                b"(" => depth += 1,
                b")" => depth -= 1,
                _ => {}
            }
        }
    }
    tok = t.next(NAME_DELIMS, b"\"").ok_or_else(|| at(None))?;
    if tok == b"." {
        t.next(NAME_DELIMS, b"\"").ok_or_else(|| at(None))?;
        tok = t.next(NAME_DELIMS, b"\"").ok_or_else(|| at(None))?;
    }
    if tok == b"(" {
        loop {
            let col = t.next(NAME_DELIMS, b"\"");
            if col.is_none_or(|c| NAME_DELIMS.contains(&c[0])) {
                return Err(at(col));
            }
            let sep = t.next(NAME_DELIMS, b"\"").ok_or_else(|| at(None))?;
            if sep == b")" {
                break;
            }
            if sep != b"," {
                return Err(at(Some(sep)));
            }
        }
        tok = t.next(NAME_DELIMS, b"\"").ok_or_else(|| at(None))?;
    }
    let from = if tok.eq_ignore_ascii_case(b"from") {
        true
    } else if tok.eq_ignore_ascii_case(b"to") {
        false
    } else {
        return Err(format!("{}; expected FROM or TO", at(Some(tok))));
    };
    let source = t.next(b";", b"'").ok_or_else(|| at(None))?;
    if !from {
        return Ok(CopyTarget::To);
    }
    Ok(
        if source.eq_ignore_ascii_case(b"stdin") || source.eq_ignore_ascii_case(b"stdout") {
            CopyTarget::FromStdin
        } else if source.eq_ignore_ascii_case(b"pstdin") || source.eq_ignore_ascii_case(b"pstdout")
        {
            CopyTarget::FromPstdin
        } else if source.eq_ignore_ascii_case(b"program") {
            CopyTarget::FromProgram
        } else {
            CopyTarget::FromFile(strip_quotes(source))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [
            ("dir", "sql/lib"),
            ("q", "it's"),
            ("bs", "a\\b"),
            ("id", "my \"t\""),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn options(src: &str, strip: bool) -> Result<Vec<String>, Unterminated> {
        let vars = vars();
        let mut o = Options::new(src.as_bytes(), &vars);
        let mut out = Vec::new();
        while let Some(opt) = o.next(strip)? {
            out.push(String::from_utf8_lossy(&opt.text).into_owned());
        }
        Ok(out)
    }

    #[test]
    fn options_table() {
        type Case<'a> = (&'a str, bool, Result<&'a [&'a str], Unterminated>);
        let cases: &[Case] = &[
            (" a.sql", true, Ok(&["a.sql"])),
            (" a.sql;", true, Ok(&["a.sql"])),
            (" a.sql;;", false, Ok(&["a.sql;;"])),
            (" 'a;'", true, Ok(&["a;"])),
            (" 'my file.sql'  b", true, Ok(&["my file.sql", "b"])),
            (
                " 'it''s' 'a\\tb' 'x\\'y' '\\101\\x42'",
                false,
                Ok(&["it's", "a\tb", "x'y", "AB"]),
            ),
            (" \"my file.sql\"", true, Ok(&["\"my file.sql\""])),
            (" :dir/a.sql", true, Ok(&["sql/lib/a.sql"])),
            (" :nope/a.sql", true, Ok(&[":nope/a.sql"])),
            (
                " :'q' :\"id\" :'bs'",
                false,
                Ok(&["'it''s'", "\"my \"\"t\"\"\"", " E'a\\\\b'"]),
            ),
            (
                " :'nope' :{?dir} :{?nope}",
                false,
                Ok(&[":'nope'", "TRUE", "FALSE"]),
            ),
            (" a:b: x", false, Ok(&["a:b:", "x"])),
            (" ''", false, Ok(&[""])),
            ("   ", false, Ok(&[])),
            (" 'open", false, Err(Unterminated)),
            (" `echo x`", false, Ok(&["`echo x`"])),
        ];
        for (src, strip, want) in cases {
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(options(src, *strip), want, "{src}");
        }
        let vars = vars();
        let mut o = Options::new(b" `pwd`/x.sql", &vars);
        assert!(o.next(true).unwrap().unwrap().backtick);
        let mut o = Options::new(b" a :dir 'c d'", &vars);
        assert_eq!(o.rest_concatenated().unwrap(), b"asql/libc d");
    }

    #[test]
    fn copy_table() {
        use CopyTarget::*;
        let file = |s: &str| Ok(FromFile(s.as_bytes().to_vec()));
        let cases: &[(&str, Result<CopyTarget, &str>)] = &[
            (
                " region   from 'region.csv'   csv header",
                file("region.csv"),
            ),
            (" t from data.csv;", file("data.csv")),
            (" t from 'it''s.csv'", file("it's.csv")),
            (
                " public.t (a, \"B c\") FROM '/abs/t.csv' WITH (FORMAT csv)",
                file("/abs/t.csv"),
            ),
            (" \"my table\" from 'x.csv'", file("x.csv")),
            (" t from 'stdin'", file("stdin")),
            (" t from stdin", Ok(FromStdin)),
            (" t FROM STDIN;", Ok(FromStdin)),
            (" t from pstdin csv", Ok(FromPstdin)),
            (" t from program 'gunzip -c t.gz'", Ok(FromProgram)),
            (" t to 'out.csv'", Ok(To)),
            (" t to program 'gzip > x'", Ok(To)),
            (" (select 'from' from t) to stdout", Ok(To)),
            (" binary t from 'b.bin'", file("b.bin")),
            ("", Err("parse error at end of line")),
            (" t", Err("parse error at end of line")),
            (" t into 'x'", Err("parse error at \"into\"")),
            (" t (a b) from 'x'", Err("parse error at \"b\"")),
        ];
        for (src, want) in cases {
            match (parse_copy(src.as_bytes()), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{src}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{src}: {got}"),
                (got, _) => panic!("{src}: {got:?}"),
            }
        }
    }
}
