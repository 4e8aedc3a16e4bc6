//! Packaging examples stay true: the Kubernetes ConfigMap's pool.toml is a valid
//! config whose paths match the Deployment and the Dockerfile, and the systemd unit
//! in orchd(1) is the one in examples/systemd/orchd.service.

use crate::common::*;

fn repo_file(rel: &str) -> String {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The block literal `  KEY: |` of a ConfigMap's `data`, dedented.
fn configmap_entry(yaml: &str, key: &str) -> String {
    let head = format!("  {key}: |");
    let mut lines = yaml.lines().skip_while(|l| *l != head);
    assert!(lines.next().is_some(), "no `{head}` in configmap.yaml");
    let mut out = String::new();
    for l in lines {
        if let Some(rest) = l.strip_prefix("    ") {
            out.push_str(rest);
        } else if !l.trim().is_empty() {
            break;
        }
        out.push('\n');
    }
    out
}

#[test]
fn kubernetes_configmap_config_passes_check_and_fits_the_deployment() {
    let toml = configmap_entry(
        &repo_file("examples/kubernetes/configmap.yaml"),
        "pool.toml",
    );
    let dir = TempDir::new("pkg-k8s");
    let cfg = dir.write("pool.toml", &toml);
    let (code, out, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "orchd --check of the ConfigMap's pool.toml:\n{out}{err}"
    );
    assert!(out.contains("from=tcp://0.0.0.0:7070"), "{out}");

    // The image runs /etc/orchd/pool.toml; the Deployment mounts the ConfigMap (the
    // directory, so updates reach the watch) there, and an emptyDir where the
    // control socket goes; the Service targets the route's port.
    let dockerfile = repo_file("examples/kubernetes/Dockerfile");
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/orchd", "/etc/orchd/pool.toml"]"#),
        "{dockerfile}"
    );
    let deployment = repo_file("examples/kubernetes/deployment.yaml");
    assert!(
        deployment.contains("mountPath: /etc/orchd\n"),
        "{deployment}"
    );
    assert!(
        !deployment
            .lines()
            .any(|l| l.trim_start().starts_with("subPath:")),
        "{deployment}"
    );
    assert!(
        toml.contains("control = \"/run/orchd/orchd.sock\""),
        "{toml}"
    );
    assert!(
        deployment.contains("mountPath: /run/orchd\n"),
        "{deployment}"
    );
    assert!(deployment.contains("containerPort: 7070"), "{deployment}");
    let service = repo_file("examples/kubernetes/service.yaml");
    assert!(service.contains("port: 7070"), "{service}");
}

#[test]
fn man_page_systemd_unit_is_the_example_file() {
    let man = repo_file("man/orchd.1");
    let unit = repo_file("examples/systemd/orchd.service");
    let snippet: Vec<String> = man
        .lines()
        .skip_while(|l| !l.starts_with("A systemd unit,"))
        .skip_while(|l| *l != ".EX")
        .skip(1)
        .take_while(|l| *l != ".EE")
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.replace("\\-", "-"))
        .collect();
    assert!(
        snippet.len() >= 5,
        "no systemd unit in orchd(1): {snippet:?}"
    );
    for line in &snippet {
        assert!(
            unit.lines().any(|u| u == line),
            "orchd(1) shows `{line}`, examples/systemd/orchd.service does not have it"
        );
    }
    for key in [
        "Type=notify",
        "ExecStart=/usr/local/bin/orchd /etc/orchd/pool.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
    ] {
        assert!(snippet.iter().any(|l| l == key), "orchd(1) lacks {key}");
    }
}
