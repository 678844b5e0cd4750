//! What the programs print while they work, for people and for machines:
//! on a terminal, short coloured lines; otherwise one plain line per event
//! (time, level, message, its fields; no module paths); `--log-format json`
//! one JSON object per line (journald, Loki). `RUST_LOG` still chooses what.
//! And an error, printed once at the end.

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Coloured on a terminal, plain otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?}: auto, text or json")),
        }
    }
}

/// Sets up the log on standard error.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Auto if terminal => builder.compact().with_ansi(true).init(),
        _ => builder.with_ansi(false).init(),
    }
}

/// An error and its causes on one line, each said once: a cause whose text
/// the line already holds (an I/O error a message quoted) is not repeated.
pub fn one_line<'a>(causes: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut out = String::new();
    for c in causes {
        let text = c.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "/x.yaml: {}", self.0)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let e = Wrapped(std::io::Error::from(std::io::ErrorKind::NotFound));
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let chain: Vec<&(dyn std::error::Error + 'static)> = vec![&e, &io];
        assert_eq!(one_line(chain), format!("/x.yaml: {io}"));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
