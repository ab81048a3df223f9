//! Positions in a document: byte offsets to LSP line/character (UTF-16
//! code units) and back.

use tower_lsp::lsp_types::{Position, Range};

/// The position of byte `offset` of `text` (clamped to the text).
pub fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|b| *b == b'\n').count();
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let character = text[line_start..offset].encode_utf16().count();
    Position::new(line as u32, character as u32)
}

/// The range of the byte range `range` of `text`.
pub fn range(text: &str, range: std::ops::Range<usize>) -> Range {
    Range::new(position(text, range.start), position(text, range.end))
}

/// The byte offset of the `chars`-th character (0-based, counted in Unicode
/// scalar values as PostgreSQL counts error positions) after `start`.
pub fn offset_after_chars(text: &str, start: usize, chars: usize) -> usize {
    text[start..]
        .char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| start + i)
}

/// The whole of 0-based line `line` of `text` (empty past the end).
pub fn line_range(text: &str, line: u32) -> Range {
    let content = text.split('\n').nth(line as usize).unwrap_or("");
    let content = content.strip_suffix('\r').unwrap_or(content);
    Range::new(
        Position::new(line, 0),
        Position::new(line, content.encode_utf16().count() as u32),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_table() {
        let text = "ab\nüé𝄞x\n";
        // (byte offset, line, UTF-16 character)
        let cases = [
            (0, 0, 0),
            (2, 0, 2),
            (3, 1, 0),
            (5, 1, 1),
            (7, 1, 2),
            (11, 1, 4),
            (12, 1, 5),
            (13, 2, 0),
            (99, 2, 0),
        ];
        for (offset, line, character) in cases {
            assert_eq!(
                position(text, offset),
                Position::new(line, character),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn chars_and_lines() {
        let text = "select 'é', x\r\nfrom t";
        assert_eq!(&text[offset_after_chars(text, 0, 12)..], "x\r\nfrom t");
        assert_eq!(offset_after_chars(text, 7, 100), text.len());
        let cases = [(0, 13), (1, 6), (5, 0)];
        for (line, end) in cases {
            assert_eq!(
                line_range(text, line),
                Range::new(Position::new(line, 0), Position::new(line, end)),
                "line {line}"
            );
        }
    }
}
