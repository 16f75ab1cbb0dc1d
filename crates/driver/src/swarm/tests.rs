use super::base64;

#[test]
fn base64_is_the_standard_alphabet_with_padding() {
    let cases: &[(&[u8], &str)] = &[
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
        (&[0xff, 0xfe, 0x00], "//4A"),
    ];
    for (input, expected) in cases {
        assert_eq!(base64(input), *expected, "{input:?}");
    }
}
