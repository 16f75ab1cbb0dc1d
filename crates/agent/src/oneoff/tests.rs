use super::*;

#[test]
fn argv_becomes_one_command_line_that_sh_reads_back_word_for_word() {
    let argv: Vec<String> = ["sh", "-c", "echo 'it''s' $HOME; exit 3", ""]
        .iter()
        .map(|word| (*word).to_owned())
        .collect();
    let line = shell_words(&argv);
    #[allow(
        clippy::disallowed_methods,
        reason = "asks the real shell how it splits the line"
    )]
    let output = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(line.replacen("exec ", "printf '<%s>' ", 1))
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "<sh><-c><echo 'it''s' $HOME; exit 3><>"
    );
}
