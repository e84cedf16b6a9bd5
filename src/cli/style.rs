//! How the plugin prints: colour only where a terminal shows it, ages as people read them.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Whether to colour the output: `auto` colours a terminal unless `NO_COLOR` is set or
/// `TERM` is `dumb`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

/// The colours a line may take; `plain` prints none of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

/// What a piece of text says about the service, which decides its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Good,
    Busy,
    Bad,
    Faint,
    Bold,
}

impl Style {
    pub const PLAIN: Style = Style { colour: false };
    pub const COLOUR: Style = Style { colour: true };

    /// The style for standard output under `choice`.
    pub fn for_stdout(choice: ColorChoice) -> Style {
        use std::io::IsTerminal;
        let colour = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var("TERM").map_or(true, |t| t != "dumb")
            }
        };
        Style { colour }
    }

    pub fn is_colour(&self) -> bool {
        self.colour
    }

    /// `text` in the colour of `tone`, or as it is in plain style.
    pub fn paint(&self, tone: Tone, text: &str) -> String {
        if !self.colour || text.is_empty() {
            return text.to_string();
        }
        let code = match tone {
            Tone::Good => "32",
            Tone::Busy => "33",
            Tone::Bad => "31",
            Tone::Faint => "2",
            Tone::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// The tone of a slot's ledger state.
pub fn state_tone(state: &str) -> Tone {
    match state {
        "Ready" => Tone::Good,
        "Pending" | "Starting" | "Repairing" | "Waiting" | "Draining" | "Terminating" => Tone::Busy,
        "Failing" | "Quarantined" | "NotReady" | "OnLostNode" | "Missing" => Tone::Bad,
        _ => Tone::Faint,
    }
}

/// How long ago `then` was, as kubectl prints ages: `42s`, `3m10s`, `5h2m`, `3d4h`.
pub fn age(now: Timestamp, then: &Time) -> String {
    let secs = (now.as_second() - then.0.as_second()).max(0);
    duration(secs)
}

/// A span of seconds in the same short form as [`age`].
pub fn duration(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match () {
        _ if d > 0 => format!("{d}d{h}h"),
        _ if secs >= 3_600 => format!("{h}h{m}m"),
        _ if secs >= 60 => format!("{m}m{s}s"),
        _ => format!("{s}s"),
    }
}

/// Paints each cell in its tone (`Bold` cells stay as they are), keeping each cell's plain
/// width for [`columns`].
pub fn paint_row(style: Style, cells: Vec<(String, Tone)>) -> Vec<(String, usize)> {
    (cells.into_iter())
        .map(|(text, tone)| {
            let len = text.chars().count();
            let text = if tone == Tone::Bold {
                text
            } else {
                style.paint(tone, &text)
            };
            (text, len)
        })
        .collect()
}

/// Pads `cells` (already painted, perhaps) to the widths their plain text takes in
/// `widths`, so colour codes do not skew the columns.
pub fn columns(cells: &[(String, usize)], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, ((cell, plain_len), width)) in cells.iter().zip(widths).enumerate() {
        line.push_str(cell);
        if i + 1 < cells.len() {
            line.push_str(&" ".repeat(width.saturating_sub(*plain_len) + 2));
        }
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl_ages() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let at = |s: &str| Time(s.parse().unwrap());
        assert_eq!(age(now, &at("2026-01-01T11:59:18Z")), "42s");
        assert_eq!(age(now, &at("2026-01-01T11:56:50Z")), "3m10s");
        assert_eq!(age(now, &at("2026-01-01T06:58:00Z")), "5h2m");
        assert_eq!(age(now, &at("2025-12-29T08:00:00Z")), "3d4h");
        // A clock a little ahead of ours is not a negative age.
        assert_eq!(age(now, &at("2026-01-01T12:00:05Z")), "0s");
    }

    #[test]
    fn plain_style_prints_no_escape_codes_and_colour_style_does() {
        assert_eq!(Style::PLAIN.paint(Tone::Bad, "Failing"), "Failing");
        assert_eq!(
            Style::COLOUR.paint(Tone::Bad, "Failing"),
            "\x1b[31mFailing\x1b[0m"
        );
    }

    #[test]
    fn columns_line_up_by_the_plain_width_of_painted_cells() {
        let painted = Style::COLOUR.paint(Tone::Good, "Ready");
        let line = columns(&[(painted.clone(), 5), ("x".into(), 1)], &[9, 1]);
        assert_eq!(line, format!("{painted}      x"));
    }
}
