//! Prints the diagnostics or the resolved environments of a manifest file (a debugging aid).
fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "rollway.toml".to_owned());
    match manifest::load(std::path::Path::new(&path)) {
        Ok(manifest) => println!("{:#?}", manifest.parity()),
        Err(error) => println!("{error}"),
    }
}
