//! Fuzz target: arbitrary bytes (as UTF-8 when valid) through `manifest::parse` and everything a
//! caller does with the result, so any panic on the way is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match manifest::parse(source, "fuzz/rollway.toml") {
        Ok(manifest) => {
            let mut resolved = manifest.resolve_all();
            assert_eq!(resolved.len(), manifest.environments.len());
            // With no environments any name resolves; with some, a name that cannot be declared
            // (environment names are slugs) is an error.
            match manifest.resolve("Not A Slug") {
                Ok(shared) => {
                    assert!(manifest.environments.is_empty());
                    resolved.push(shared);
                }
                Err(unknown) => assert!(!unknown.declared.is_empty()),
            }
            for environment in &resolved {
                let _ = environment.required_config().names();
                serde_json::to_string(environment).expect("a resolved manifest serializes");
            }
            serde_json::to_string(&manifest.parity()).expect("a parity report serializes");
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "an error has at least one diagnostic");
            let rendered = diagnostics.render(false);
            assert!(!rendered.is_empty());
            let located = diagnostics.located();
            assert_eq!(located.len(), diagnostics.len());
            for diagnostic in &located {
                assert!(diagnostic.line >= 1 && diagnostic.column >= 1);
            }
            serde_json::to_string(&located).expect("located diagnostics serialize");
        }
    }
});
