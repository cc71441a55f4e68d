//! What is wrong with a config: problems with their field path, file line and fix.

use std::fmt;

/// One validation problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, for example `backends[0].servers.addresses[2].weight`.
    pub field: String,
    pub message: String,
    pub fix: String,
}

impl Problem {
    pub fn new(
        field: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// Everything wrong with a config file, located in the file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<(Option<usize>, Problem)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} has {} problem(s):", self.file, self.problems.len())?;
        for (line, p) in &self.problems {
            match line {
                Some(line) => write!(f, "  {}:{}: ", self.file, line)?,
                None => write!(f, "  {}: ", self.file)?,
            }
            writeln!(f, "{}: {}\n    fix: {}", p.field, p.message, p.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
