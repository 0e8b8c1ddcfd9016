//! `scripts/install.sh` installs a plugin that works like any other: `gst-inspect-1.0` and a real
//! `gst-launch-1.0` pipeline, run from a folder outside the source tree, find it through
//! `GST_PLUGIN_PATH` and load the models installed beside it. The model search order itself is
//! checked on a fake layout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gstavaepurify::paths::{self, ModelSearch};

/// A fresh folder in the system's temporary folder (outside the source tree), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("avae-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temporary folder");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The plugin library of this build: `cargo test` writes the cdylib beside the test executable
/// (`target/<profile>/deps`).
fn built_plugin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .map(|deps| deps.join("libgstavaepurify.so"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| panic!("libgstavaepurify.so not found beside {}", exe.display()))
}

fn check(what: &str, output: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

#[test]
fn installed_plugin_runs_outside_the_source_tree_with_its_installed_models() {
    let root = TempDir::new("run");
    let prefix = root.0.join("prefix");
    let work = root.0.join("work");
    fs::create_dir_all(&work).unwrap();
    assert!(!work.starts_with(workspace()), "{}", work.display());

    let output = Command::new("bash")
        .arg(workspace().join("scripts/install.sh"))
        .arg("--plugin")
        .arg(built_plugin())
        .arg("--prefix")
        .arg(&prefix)
        .current_dir(&work)
        .output()
        .expect("bash runs scripts/install.sh");
    let (stdout, _) = check("scripts/install.sh", &output);
    let libdir = prefix.join("lib/gstreamer-1.0");
    let models = prefix.join("share/avae-purify/models");
    assert!(
        stdout.contains(&format!("export GST_PLUGIN_PATH={}", libdir.display())),
        "install.sh does not print the GST_PLUGIN_PATH line:\n{stdout}"
    );
    assert!(libdir.join("libgstavaepurify.so").is_file());
    for file in [
        "avae-cpu/manifest.json",
        "avae-cpu/encoder.onnx",
        "avae-cpu/decoder.onnx",
        "centerface/centerface.onnx",
        "centerface/LICENSE",
    ] {
        assert!(models.join(file).is_file(), "{file} not installed");
    }
    assert!(
        !models.join("recognizer").exists(),
        "the evaluation-only recogniser must not be installed"
    );

    let gst = |program: &str, args: &[&str]| {
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(&work)
            .env("GST_PLUGIN_PATH", &libdir)
            .env("GST_REGISTRY", root.0.join("registry.bin"))
            .env("AVAE_CACHE_DIR", root.0.join("cache"))
            .env("GST_DEBUG_NO_COLOR", "1")
            .env_remove(paths::MODELS_ENV)
            .env_remove(gstavaepurify::bundle::MODEL_ENV)
            .env_remove(gstavaepurify::avaefacedetect::MODEL_ENV);
        command
    };
    let bundle = models.join("avae-cpu");
    let detector = models.join("centerface/centerface.onnx");

    for (element, default) in [("avaepurify", &bundle), ("avaefacedetect", &detector)] {
        let output = gst("gst-inspect-1.0", &[element])
            .output()
            .expect("gst-inspect-1.0 runs (install gstreamer1.0-tools)");
        let (stdout, _) = check(&format!("gst-inspect-1.0 {element}"), &output);
        let expected = format!("Default: \"{}\"", default.display());
        assert!(
            stdout.contains(&expected),
            "{element}'s model default is not the installed {}:\n{stdout}",
            default.display()
        );
    }

    let output = gst(
        "gst-launch-1.0",
        &[
            "videotestsrc",
            "num-buffers=5",
            "!",
            "video/x-raw,width=320,height=240",
            "!",
            "videoconvert",
            "!",
            "avaefacedetect",
            "!",
            "avaepurify",
            "!",
            "fakesink",
        ],
    )
    .env("GST_DEBUG", "avaepurify:4,avaefacedetect:4")
    .output()
    .expect("gst-launch-1.0 runs");
    let (_, log) = check("the installed pipeline", &output);
    for loaded in [
        format!("Loaded model bundle '{}'", bundle.display()),
        format!("Loaded face detector '{}'", detector.display()),
    ] {
        assert!(
            log.contains(&loaded),
            "the pipeline log lacks {loaded:?}:\n{log}"
        );
    }
}

/// A folder tree standing in for a models folder holding `avae-cpu/`.
fn models_folder(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("avae-cpu")).unwrap();
    dir.to_path_buf()
}

#[test]
fn model_search_takes_the_first_folder_that_has_the_model() {
    let root = TempDir::new("layout");
    let r = &root.0;
    let prefix = r.join("prefix");
    let installed = models_folder(&prefix.join("share/avae-purify/models"));
    let home_models = models_folder(&r.join("home/.local/share/avae-purify/models"));
    let source = models_folder(&r.join("src/models"));
    let env = r.join("env");
    fs::create_dir_all(&env).unwrap();
    let mut search = ModelSearch {
        models_env: Some(env.clone()),
        plugin_file: Some(prefix.join("lib/x86_64-linux-gnu/gstreamer-1.0/libgstavaepurify.so")),
        xdg_data_home: None,
        home: Some(r.join("home")),
        source_models: source.clone(),
    };
    assert_eq!(
        search.folders(),
        [
            env.clone(),
            installed.clone(),
            home_models.clone(),
            PathBuf::from("/usr/local/share/avae-purify/models"),
            PathBuf::from("/usr/share/avae-purify/models"),
            source.clone(),
        ]
    );
    // The env folder lacks the bundle: the installed one comes next.
    assert_eq!(search.find("avae-cpu").unwrap(), installed.join("avae-cpu"));
    models_folder(&env);
    assert_eq!(search.find("avae-cpu").unwrap(), env.join("avae-cpu"));

    search.models_env = None;
    search.plugin_file = None;
    assert_eq!(
        search.find("avae-cpu").unwrap(),
        home_models.join("avae-cpu")
    );
    search.xdg_data_home = Some(r.join("xdg"));
    assert_eq!(search.folders()[0], r.join("xdg/avae-purify/models"));
    search.xdg_data_home = Some(PathBuf::from("relative/xdg"));
    assert_eq!(
        search.folders()[0],
        home_models,
        "a relative XDG_DATA_HOME is ignored"
    );
    search.home = None;
    search.xdg_data_home = None;
    assert_eq!(search.find("avae-cpu").unwrap(), source.join("avae-cpu"));

    search.plugin_file = Some(prefix.join("lib/gstreamer-1.0/libgstavaepurify.so"));
    let missing = search.find("centerface/centerface.onnx").unwrap_err();
    assert_eq!(missing.tried.len(), 4);
    assert_eq!(
        missing.tried[0],
        installed.join("centerface/centerface.onnx")
    );
    let message = missing.to_string();
    assert!(message.contains("AVAE_PURIFY_MODELS (unset)"), "{message}");
    for tried in &missing.tried {
        assert!(message.contains(&tried.display().to_string()), "{message}");
    }
}

#[test]
fn install_prefix_is_found_from_the_plugin_file() {
    for (plugin, prefix) in [
        ("/opt/x/lib/gstreamer-1.0/libgstavaepurify.so", "/opt/x"),
        (
            "/usr/lib/x86_64-linux-gnu/gstreamer-1.0/libgstavaepurify.so",
            "/usr",
        ),
        ("/opt/x/lib64/gstreamer-1.0/libgstavaepurify.so", "/opt/x"),
        ("/opt/x/lib/libgstavaepurify.so", "/opt/x"),
        ("/src/target/release/libgstavaepurify.so", "/src/target"),
    ] {
        assert_eq!(
            paths::install_prefix(Path::new(plugin)),
            Some(PathBuf::from(prefix)),
            "{plugin}"
        );
    }
}

#[test]
fn a_missing_default_model_is_reported_with_every_place_tried() {
    let relative = "no-such-bundle";
    let search = ModelSearch::current();
    let missing = search.find(relative).unwrap_err();
    let default = missing.tried.last().unwrap();
    assert_eq!(*default, workspace().join("models").join(relative));
    let note = paths::not_found_note(default, relative).expect("a note for the default");
    for tried in &missing.tried {
        assert!(note.contains(&tried.display().to_string()), "{note}");
    }
    assert_eq!(
        paths::not_found_note(Path::new("/elsewhere/no-such-bundle"), relative),
        None,
        "a path the user chose gets no search note"
    );
}
