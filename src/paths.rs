//! Where the shipped models are found at run time.
//!
//! The default bundle (`avae-cpu/`) and detector (`centerface/centerface.onnx`) live in a
//! *models folder*. [`ModelSearch::folders`] lists the candidates, first match wins:
//!
//! 1. `$AVAE_PURIFY_MODELS`, a models folder named by the user;
//! 2. the data folder of the prefix the plugin is installed in: for
//!    `<prefix>/lib[/<multiarch>]/gstreamer-1.0/libgstavaepurify.so` (what `scripts/install.sh`
//!    writes), `<prefix>/share/avae-purify/models`. The plugin finds its own file with `dladdr`
//!    on one of its functions, so this works wherever the prefix is and whatever the working
//!    folder; a program that links the crate statically has no plugin file and skips this place;
//! 3. `$XDG_DATA_HOME/avae-purify/models` (when absolute), else
//!    `~/.local/share/avae-purify/models`;
//! 4. `/usr/local/share/avae-purify/models`, then `/usr/share/avae-purify/models`;
//! 5. the `models/` folder of the source tree this build came from (for developers).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable naming a models folder (holding `avae-cpu/` and `centerface/`).
pub const MODELS_ENV: &str = "AVAE_PURIFY_MODELS";

/// The models folder below a data folder (`<prefix>/share`, `~/.local/share`, ...).
pub const DATA_SUBDIR: &str = "avae-purify/models";

/// What the model search looks at. [`ModelSearch::current`] reads it from the process; tests
/// build one by hand to check the order on a fake layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSearch {
    /// The value of `AVAE_PURIFY_MODELS`, when set and not empty.
    pub models_env: Option<PathBuf>,
    /// The shared library this code was loaded from, when it is one (the installed plugin).
    pub plugin_file: Option<PathBuf>,
    /// `$XDG_DATA_HOME`.
    pub xdg_data_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// The developer fallback, `<source tree>/models`.
    pub source_models: PathBuf,
}

/// A shipped model found in none of the models folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelNotFound {
    /// The model, relative to a models folder (`avae-cpu`).
    pub relative: PathBuf,
    /// Every path looked at, in order.
    pub tried: Vec<PathBuf>,
    /// Whether `AVAE_PURIFY_MODELS` was set (when it was, its folder is the first of `tried`).
    pub models_env_set: bool,
}

impl fmt::Display for ModelNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the shipped {} was looked for in",
            self.relative.display()
        )?;
        if !self.models_env_set {
            write!(f, " {MODELS_ENV} (unset),")?;
        }
        let tried: Vec<String> = self.tried.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            " {} and found in none (set {MODELS_ENV} to a folder holding avae-cpu/ and \
             centerface/, or install with scripts/install.sh)",
            tried.join(", ")
        )
    }
}

impl ModelSearch {
    /// The search as this process sees it: its environment and the plugin's own file.
    pub fn current() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        ModelSearch {
            models_env: var(MODELS_ENV),
            plugin_file: loaded_library(),
            xdg_data_home: var("XDG_DATA_HOME"),
            home: var("HOME"),
            source_models: Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        }
    }

    /// The models folders, in the order they are searched (module docs), without repeats.
    pub fn folders(&self) -> Vec<PathBuf> {
        let absolute = |p: &Option<PathBuf>| p.clone().filter(|p| p.is_absolute());
        let mut folders = Vec::new();
        folders.extend(self.models_env.clone());
        folders.extend(
            self.plugin_file
                .as_deref()
                .and_then(install_prefix)
                .map(|prefix| prefix.join("share").join(DATA_SUBDIR)),
        );
        folders.extend(
            absolute(&self.xdg_data_home)
                .or_else(|| absolute(&self.home).map(|home| home.join(".local/share")))
                .map(|data| data.join(DATA_SUBDIR)),
        );
        for data in ["/usr/local/share", "/usr/share"] {
            folders.push(Path::new(data).join(DATA_SUBDIR));
        }
        folders.push(self.source_models.clone());
        let mut unique = Vec::with_capacity(folders.len());
        for folder in folders {
            if !unique.contains(&folder) {
                unique.push(folder);
            }
        }
        unique
    }

    /// `relative` (a bundle folder or a model file) in the first models folder that has it.
    pub fn find(&self, relative: impl AsRef<Path>) -> Result<PathBuf, ModelNotFound> {
        let relative = relative.as_ref();
        let tried: Vec<PathBuf> = self
            .folders()
            .iter()
            .map(|folder| folder.join(relative))
            .collect();
        match tried.iter().find(|path| path.exists()) {
            Some(found) => Ok(found.clone()),
            None => Err(ModelNotFound {
                relative: relative.to_path_buf(),
                tried,
                models_env_set: self.models_env.is_some(),
            }),
        }
    }
}

/// The default path of a shipped model: where [`ModelSearch::current`] finds it, else the
/// source-tree path (the last place tried), so that loading it fails with
/// [`not_found_note`]'s list.
pub fn shipped_model(relative: impl AsRef<Path>) -> PathBuf {
    ModelSearch::current()
        .find(relative)
        .unwrap_or_else(|missing| missing.tried.last().cloned().unwrap_or_default())
}

/// When `path` is a default that the search for `relative` did not find, the sentence that
/// lists every place tried, for the load error; `None` for a path the user chose.
pub fn not_found_note(path: &Path, relative: impl AsRef<Path>) -> Option<String> {
    match ModelSearch::current().find(relative) {
        Err(missing) if missing.tried.iter().any(|p| p == path) => Some(missing.to_string()),
        _ => None,
    }
}

/// `<prefix>` of a library installed as `<prefix>/lib[/<multiarch>]/gstreamer-1.0/<file>` (or
/// `<prefix>/lib/<file>`); for a library elsewhere, the folder above the library's folder.
pub fn install_prefix(library: &Path) -> Option<PathBuf> {
    let named_lib = |p: &Path| {
        p.file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|n| n.starts_with("lib"))
    };
    let mut dir = library.parent()?;
    if dir.file_name() == Some(OsStr::new("gstreamer-1.0")) {
        dir = dir.parent()?;
    }
    if !named_lib(dir) && dir.parent().is_some_and(named_lib) {
        dir = dir.parent()?;
    }
    dir.parent().map(Path::to_path_buf)
}

/// The shared library (`*.so*`) this function was loaded from, as the dynamic loader opened
/// it; `None` in a program that links the crate statically (tests, the trainer).
#[cfg(unix)]
fn loaded_library() -> Option<PathBuf> {
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::os::unix::ffi::OsStrExt;

    /// `Dl_info` of `<dlfcn.h>`.
    #[repr(C)]
    struct DlInfo {
        fname: *const c_char,
        fbase: *mut c_void,
        sname: *const c_char,
        saddr: *mut c_void,
    }
    unsafe extern "C" {
        fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    }

    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    let this: fn() -> Option<PathBuf> = loaded_library;
    // SAFETY: `dladdr` only reads the loader's tables for an address of this process's code
    // and fills `info`; `fname` then points to the loader's own string for the object, valid
    // while the object stays loaded (it is this code's own object, so it is).
    let fname = unsafe {
        if dladdr(this as *const c_void, &mut info) == 0 || info.fname.is_null() {
            return None;
        }
        CStr::from_ptr(info.fname)
    };
    let path = PathBuf::from(OsStr::from_bytes(fname.to_bytes()));
    let shared = path
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.ends_with(".so") || n.contains(".so."));
    if !shared {
        return None;
    }
    if path.is_absolute() {
        Some(path)
    } else {
        std::env::current_dir().ok().map(|cwd| cwd.join(path))
    }
}

/// No portable way to find the library's own file elsewhere: the installed-prefix place is
/// skipped.
#[cfg(not(unix))]
fn loaded_library() -> Option<PathBuf> {
    None
}
