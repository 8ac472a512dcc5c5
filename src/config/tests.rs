//! Unit tests of the `config.toml` schema.

use super::*;

#[test]
fn unknown_key_names_file_and_key() {
    let dir = std::env::temp_dir().join(format!("vigil-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "backend = \"ort\"\nbatch_size = 4\n",
    )
    .unwrap();
    let err = ModelConfig::load(&dir).unwrap_err().to_string();
    assert!(err.contains("config.toml"), "{err}");
    assert!(err.contains("batch_size"), "{err}");
    std::fs::write(dir.join("config.toml"), "backend = \"tract\"\n").unwrap();
    assert_eq!(
        ModelConfig::load(&dir).unwrap().backend,
        Some(BackendChoice::Tract)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ModelConfig::load(&dir).unwrap(), ModelConfig::default());
}

#[test]
fn policies_and_rollouts_validate() {
    let parse = |t: &str| toml::from_str::<ModelConfig>(t).unwrap();
    assert_eq!(
        parse("").version_policy.policy(),
        Ok(VersionPolicy::Latest(1))
    );
    assert_eq!(
        parse("[version_policy]\nlatest = 3")
            .version_policy
            .policy(),
        Ok(VersionPolicy::Latest(3))
    );
    assert_eq!(
        parse("[version_policy]\nspecific = [1, 3]")
            .version_policy
            .policy(),
        Ok(VersionPolicy::Specific(vec![1, 3]))
    );
    assert_eq!(
        parse("[version_policy]\nall = true")
            .version_policy
            .policy(),
        Ok(VersionPolicy::All)
    );
    assert!(parse("[version_policy]\nall = true\nlatest = 2")
        .version_policy
        .policy()
        .is_err());
    assert!(parse("[version_policy]\nlatest = 0")
        .version_policy
        .policy()
        .is_err());
    let r = parse("[rollout]\nstable = 1\ncanary = 2\nweight = 10\nmode = \"shadow\"").rollout;
    assert_eq!(r.mode, RolloutMode::Shadow);
    assert_eq!(r.sticky_header, DEFAULT_STICKY_HEADER);
    assert!(r.validate().is_ok());
    assert!(parse("[rollout]\ncanary = 2\nweight = 101")
        .rollout
        .validate()
        .is_err());
    assert!(parse("[rollout]\nstable = 2\ncanary = 2")
        .rollout
        .validate()
        .is_err());
    assert!(toml::from_str::<ModelConfig>("[rollout]\nweigth = 3").is_err());
}

#[test]
fn retrain_timeout_must_be_positive() {
    let check = |t: &str| {
        toml::from_str::<ModelConfig>(&format!("[retrain]\ntimeout = \"{t}\""))
            .unwrap()
            .retrain
            .validate()
    };
    for bad in ["0", "0s", "0ms", "200y", "-1s", "1e20", "soon"] {
        let err = check(bad).unwrap_err();
        assert!(err.contains("retrain.timeout"), "{bad}: {err}");
    }
    for good in ["1ms", "250ms", "15s", "1h", "2d"] {
        assert_eq!(check(good), Ok(()), "{good}");
    }
}
