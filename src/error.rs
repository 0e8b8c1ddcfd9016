use std::path::PathBuf;

/// Everything that can go wrong while loading a bundle or purifying faces.
///
/// Every variant names the file, property or value involved and what was expected, so that
/// the message can be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle folder or one of its files is missing, unreadable or inconsistent.
    #[error("model bundle {path}: {reason}")]
    Bundle {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// An inference engine could not be created or failed while running.
    #[error("{backend} engine ({path}): {reason}")]
    Engine {
        /// `tract` or `ort`.
        backend: &'static str,
        /// The graph the engine runs.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A parameter is out of its valid range.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidParameter {
        /// Property or argument name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

impl Error {
    pub(crate) fn bundle(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Bundle {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
