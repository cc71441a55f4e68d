//! Loading a config, in one place: read the file, parse it into the typed model, validate
//! it, then check the files it names. Every consumer gets the result; none re-parses.

use std::path::Path;

use super::{
    error::{ConfigError, Problem},
    locate::{line_of, locate},
    model::Config,
};

/// At most this many problems of the parsing stage are reported for one file.
const MAX_PARSE_PROBLEMS: usize = 64;

impl Config {
    /// Read, parse and validate a config file, and check the files it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![(
                None,
                Problem::new(
                    "(file)",
                    format!("cannot read the file: {e}"),
                    "check the path given to --config",
                ),
            )],
        })?;
        Config::parse(&file, &text)
    }

    /// Parse and validate config text and check the files it names; `file` names it in
    /// errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let located = |problems: Vec<Problem>| {
            let doc = toml_edit::Document::parse(text).ok();
            ConfigError {
                file: file.to_string(),
                problems: problems
                    .into_iter()
                    .map(|p| {
                        let line = doc
                            .as_ref()
                            .and_then(|d| locate(d, &p.field))
                            .map(|offset| line_of(text, offset));
                        (line, p)
                    })
                    .collect(),
            }
        };
        let value: toml::Value = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            problems: vec![(
                e.span().map(|s| line_of(text, s.start)),
                Problem::new(
                    "(syntax)",
                    e.message().trim(),
                    "see the config reference in README.md and examples/",
                ),
            )],
        })?;
        let (config, mut problems) = typed(value);
        if let Some(config) = &config {
            let reported: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
            problems.extend(
                config
                    .validate()
                    .into_iter()
                    .chain(config.check_files())
                    .filter(|p| !reported.contains(&p.field)),
            );
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(located(problems)),
        }
    }

    /// Problems with the files the config names (certificates, CA bundles): they must be
    /// readable. Kept apart from `validate`, which reads nothing.
    pub fn check_files(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (i, f) in self.frontends.iter().enumerate() {
            for (j, bind) in f.binds.iter().enumerate() {
                if let (Some(true), Some(path)) = (bind.ssl, &bind.ssl_certificate)
                    && let Err(e) = std::fs::metadata(path)
                {
                    out.push(Problem::new(
                        format!("frontends[{i}].binds[{j}].ssl_certificate"),
                        format!("cannot read {path:?}: {e}"),
                        "give the path of a PEM file with the certificate chain and key",
                    ));
                }
            }
        }
        for (i, b) in self.backends.iter().enumerate() {
            if let (Some(true), Some(path)) = (b.options.tls_verify, &b.options.tls_ca)
                && let Err(e) = std::fs::metadata(path)
            {
                out.push(Problem::new(
                    format!("backends[{i}].options.tls_ca"),
                    format!("cannot read {path:?}: {e}"),
                    "give the path of a PEM file of CA certificates",
                ));
            }
        }
        if let Some(ha) = &self.ha {
            match std::fs::read(&ha.secret_file) {
                Err(e) => out.push(Problem::new(
                    "ha.secret_file",
                    format!("cannot read {:?}: {e}", ha.secret_file),
                    "give the path of a file with the secret both nodes share, such as one made by `head -c 32 /dev/urandom | base64 > /etc/lb/ha.secret`",
                )),
                Ok(secret) if secret.trim_ascii().len() < 16 => out.push(Problem::new(
                    "ha.secret_file",
                    format!(
                        "{:?} holds {} bytes; a shared secret needs at least 16",
                        ha.secret_file,
                        secret.trim_ascii().len()
                    ),
                    "write a longer secret, such as `head -c 32 /dev/urandom | base64`",
                )),
                Ok(_) => {}
            }
        }
        out
    }
}

/// Deserialize the typed model, reporting every field that does not fit rather than only
/// the first: after each error the offending value is set aside (an unknown word becomes
/// the first word of its set, anything else is removed, an array with a bad element
/// whole, so that no later index shifts) and parsing runs again. The config
/// is returned when such substitutes let it parse, so that validation can report the rest;
/// it is never used when any problem was found.
fn typed(mut value: toml::Value) -> (Option<Config>, Vec<Problem>) {
    let mut problems = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(config) => return (Some(config), problems),
            Err(e) => e,
        };
        let path = error.path().to_string();
        let message = error.inner().message().trim().to_string();
        let (problem, recovery) = describe(&path, &message);
        let fields: Vec<String> = problem.field.split('.').map(String::from).collect();
        let already = problems
            .iter()
            .any(|p: &Problem| p.field.starts_with(&problem.field));
        if matches!(recovery, Recovery::None) && already {
            // A required value that was set aside: it is reported already.
            return (None, problems);
        }
        problems.push(problem);
        if problems.len() >= MAX_PARSE_PROBLEMS || !set_aside(&mut value, &fields, recovery) {
            return (None, problems);
        }
    }
}

/// How a value that does not fit is set aside for the next attempt.
enum Recovery {
    /// An unknown word of a closed set: use this word of the set instead.
    Word(String),
    /// Remove the key.
    Remove,
    /// Nothing to set aside (a missing field).
    None,
}

/// The problem a serde error describes: its full field path, the message and a fix.
fn describe(path: &str, message: &str) -> (Problem, Recovery) {
    let at = |field: &str| match path {
        "." | "" => field.to_string(),
        p => format!("{p}.{field}"),
    };
    let backticked = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    };
    let here = if path.is_empty() { "." } else { path };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        // The path names the unknown field itself.
        let words = backticked(rest);
        let field = words.first().cloned().unwrap_or_default();
        let fix = match words.get(1..) {
            Some(known) if !known.is_empty() => {
                format!("remove it, or use one of: {}", known.join(", "))
            }
            _ => "remove it".to_string(),
        };
        return (
            Problem::new(here, format!("unknown field {field:?}"), fix),
            Recovery::Remove,
        );
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        let field = backticked(rest).first().cloned().unwrap_or_default();
        return (
            Problem::new(
                at(&field),
                format!("{field} is required"),
                format!("add {field} = ... (see the config reference in README.md)"),
            ),
            Recovery::None,
        );
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let words = backticked(rest);
        let given = words.first().cloned().unwrap_or_default();
        let field = here.rsplit('.').next().unwrap_or(here);
        let known = words.get(1..).unwrap_or_default();
        return (
            Problem::new(
                here,
                format!("unknown {field} {given:?}"),
                format!("use one of: {}", known.join(", ")),
            ),
            known
                .first()
                .map_or(Recovery::Remove, |w| Recovery::Word(w.clone())),
        );
    }
    // The config's own value types say how to fix what they refuse (`values::FIX`).
    let (message, fix) = message.split_once(super::values::FIX).unwrap_or((
        message,
        "see the config reference in README.md and examples/",
    ));
    (Problem::new(here, message, fix), Recovery::Remove)
}

/// Apply `recovery` at the field path `fields` (`backends[0]`, `servers`, ...); false when
/// the path is not in the document.
fn set_aside(value: &mut toml::Value, fields: &[String], recovery: Recovery) -> bool {
    let Some((last, parents)) = fields.split_last() else {
        return false;
    };
    let mut node = value;
    for part in parents {
        match step(node, part) {
            Some(next) => node = next,
            None => return false,
        }
    }
    let (key, indices) = split_indices(last);
    let Some(table) = node.as_table_mut() else {
        return false;
    };
    match (recovery, indices.as_slice()) {
        (Recovery::None, _) => false,
        (Recovery::Remove, []) => table.remove(key).is_some(),
        (Recovery::Word(w), []) => table.insert(key.into(), toml::Value::String(w)).is_some(),
        (Recovery::Remove, _) => table.remove(key).is_some(),
        (Recovery::Word(w), [outer @ .., idx]) => {
            let mut target = table.get_mut(key);
            for i in outer {
                target = target.and_then(|v| v.as_array_mut()?.get_mut(*i));
            }
            match target.and_then(|v| v.as_array_mut()?.get_mut(*idx)) {
                Some(element) => {
                    *element = toml::Value::String(w);
                    true
                }
                None => false,
            }
        }
    }
}

fn step<'a>(node: &'a mut toml::Value, part: &str) -> Option<&'a mut toml::Value> {
    let (key, indices) = split_indices(part);
    let mut node = node.as_table_mut()?.get_mut(key)?;
    for i in indices {
        node = node.as_array_mut()?.get_mut(i)?;
    }
    Some(node)
}

/// `addresses[1]` -> ("addresses", [1]).
fn split_indices(part: &str) -> (&str, Vec<usize>) {
    match part.find('[') {
        Some(b) => (
            &part[..b],
            part[b..]
                .split(['[', ']'])
                .filter_map(|s| s.parse().ok())
                .collect(),
        ),
        None => (part, Vec::new()),
    }
}
