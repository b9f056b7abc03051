//! Known-answer vectors for the link record layer and its key ratchet, so a
//! change to the wire format or the key schedule fails loudly. Computed once
//! from the implementation and checked independently (Python `hmac` HKDF and
//! `cryptography` AES-GCM: nonce 0, the header as associated data).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use veilnet_cell::CELL_LEN;
use veilnet_crypto::link::{
    RecordOpener, RecordSealer, RECORD_HEADER_LEN, RECORD_KEY_UPDATE, RECORD_TAG_LEN,
};
use veilnet_crypto::rekey::next_key;
use veilnet_crypto::{CryptoError, RekeyPolicy};

/// `next_key([0x11; 32])`: HKDF-SHA256, empty salt, info `"veilnet rekey v1"`.
const NEXT_KEY_11: &str = "0fd6d184842806b69acb093e32ccac5f6be2cbb1664e8d8163284ef05e93cf21";

/// `next_key([0x22; 32])`, the key after record A.
const NEXT_KEY_22: &str = "fa47796674a0e0d51a51e9c63c1fabbed0072a319a4bcd174c3abefe34ba5741";

/// The session key of the vectors' sending direction.
const KEY: [u8; 32] = [0x22; 32];

/// Record A: the first record under [`KEY`], one cell of bytes `i as u8`,
/// carrying KEY_UPDATE (header `8001`).
const RECORD_A: &str = concat!(
    "8001c8f1d617ab6c990ca87c5f9d4ed3deaaca189e709aa6c4a7a0c6c48d7806b3603adfd81ff52c588b17187b8707a7",
    "4766744b1a64091c6b1c35dce94267dc92fdbc97d456b0b2479a8e872cb7132148e012b32df5060cc15e73c5432702db",
    "d8aaa963c9969ffea491fb5566e0e52bcd439e3713bf58b6102c11b5ad83c59fefadf82e3255be2eff44a254ca20de2d",
    "050ab26bcbcf1d04c8c535bc9bf2b07ab6736c4abb15a1d3045d5187373a91a0176d8fd4a9853df3c64a59060fd07bfc",
    "328489470a8295e0f77714dde861aa5bb2fa3b807d75b32252fbffe50c8e41c472638408bfebf2e85db9360bccf349c8",
    "49fec049b23fab277e52e1e95b9f0debf89684a91f3c1ce046cf0e6711c49847dff2c3ef976e810c53d10f5906540478",
    "d6bfce611ba19f6c8d6f8b64396300887671b4d00872e55fc69a16712c1257c12981f768259264132db0beb1f435eef1",
    "7c07391ff6ea3e6188c7554a2dd00144debdc28c2ed9a4c452f9e3a78ab1314a1041705add6af2aeff71d79c58a1cb2d",
    "97ad77cff85849d7fb9b4a3ec2e6fe46eace8b6e02f00c383c73aa75438037b2d1f8d397b40ac22e494a5e4047c89794",
    "6c2063cf51035487eff151ed22a65c860ac60bf47384a3afabe200c3216bf5e7c10faa32333f0ebf1fb528266e08f82e",
    "0a5a0bcf2b9bc10b1bfbeac4341db3591c564bc7dceaa34ca4523fa227656aa2a0e209e1aeba0d1d5ba7a7c149d47aa7",
    "98ff7a8d411938e17792e5b352f07fa1de7827d70c278bc037dcb2d1c8ee13a065ee1dfd1cac4dbcb9d15667c0e955ae",
    "7eeb95dcb8b7b553fbb3c343606071fa180c6dbc0c89b3d3489f7d0df47685e63adff2f8ba09b54380fad038ff9f3b82",
    "82b2474bc8b2344abc41ce32413d712dd735c17d6197305aa2054aec029997a7454836f859e319b3bc12782638fdd680",
    "a32db71c1a2e185541a100bb9d5281d8812ab2730b89f492ccfe3ef449a2397020a5f29b63e16588f753590c7722c57a",
    "2ab1d240d19ecece7884698a7da0ef361e68465d96716dee3d374230a876cb83e9bf6c6efb0d41e45b07ae28fe5781a9",
    "a2d8062bdf706ec20c249bfc6ff6ca3e1efb6dcee83b2b822f32a088c41e114d704134aa0debe10fc02e3764531cb3b2",
    "a52aadcc6ca6ac9f0022af0c46ab1ff827f0e31c6a088f239d06b2e8cc2a3550830ae9f963c898d8f26c97feed059890",
    "f290654affb411f23e535d11e2a851450a2dde370316c49a0f8e89ecf26e6db304b52d94d8e3a32f9aaf73cf747b9d5c",
    "a15fb93dd01df6da5277da137a47e7c178cb0acb8bd50a6167e75ae862f425461d3aaaec0a8101a3168a65d34673dba7",
    "aaf7f0529110d5d2ecaa3511c2e566965d67c252d060930c664288d93818b442ad9de7003df8122fc373b4b4c22de752",
    "3cc21a6140f104f093204ea264f918e7d5261f356015fd047daa4c047e3dfcf4d121502e51071d97c36ce2dec19427c0",
    "971024d7703151044d9accdaa6065917e0fab594fc0185653466fec216ab28fb100414a457402f58eb0139449152e32f",
    "803cf3f02d5a4b736c70f792e3aa4c0f3da897c1b9ff4bbfae3c0c94493ebb2a797591ec0309e3c9f4137d7d3e1187f3",
    "5deb5ed88632399dee1d8e47f449655ffeedea99a1147bbf45050a3fb65a76fb03cc2f8ff74758ffd42b001e703ff6e3",
    "c637d73a44c7f316fe65f25113ac0ffe8c99ebc93259cbdadd39d7fc5505bb237605905d8c0ae6891a0fede60b444333",
    "f06656a395ecdeb4c3cdb9ddd58fe584b5438c2a012599c9105b3efe0f2011b90fefea09a684bf150b263a516b06b6e1",
    "202f25361c89a7f96ad072aa5f6e4609f02bd96c3721dd9b4cd0aeec5392bc327e01eeb7f5e345fea2cad125d9eed5c6",
    "3fd2797c4c6cc521d98c430ba8ba683486cb2a51dbc54f3f2f2bc219a8e34ae5b2216e165da489ddee3aef4b230f6837",
    "4808fa1d04ef22237317db4f3d701f7f8914797d8e32f391927530a145b64246a248a599ce100a966c228ae8a661f539",
    "3fafc9e88be163770215d43cce235415f6e5ec1ce197c95aa40b965123ce2f093536ce5e2f69a4d806f0c3b8b16d8e8f",
    "722961c13c9436da1d4bbe1ce490bc157f34342216c54bcd727aecd6568a26238f3e06fe73a4fc536c7a168792b0c686",
    "1104c79f1d38e94d74b422c554a5cb227d479ff7e029fc001812f68a5462711e1152be1483d2461673f6754c3ce3ab70",
    "610eaab833a960cec34eb00d3e675f27d0f3ad5c58279993ddec418fcaed9235b8c6ca1c05f8e4841ba383e83af47df2",
    "ada36dc4b821cd89fea0ac49f8dd169ff3de4058925a276d50f166bcf7ecd563aba4d6902a02ea3b13debb07e0fa633d",
    "76628412186b90f75f2f5d18c1b4deb8824e632776e1faa7be4ac7956acf06dbd4737ed5be7cf1882154581e60d4ebb1",
    "b46a7683a98fad66c40c3b7140cd031b581fe268bdc1a243fc4e0057138d4722321ce81ef4ef5d21387c65ea78be1d67",
    "e5c8d831b4aca969f677ec27a108aacc678bf4f4321ab863d7c50b55c656d4c9876ed8b93435e72e520325290aa288f5",
    "56f9a984763df7aaf0d3bb776af75531c0f3f14567dd4ce051a32c12e02c84621c5d8dbe0e4f80040bd77fe7e8ee0f3c",
    "ea17f6ddf1b26b98ef6e25bfaaff901a243c35ec526ec51cd17e8e4dcda202ff8f8ea0407d9905d04c00f2fc5cb6fa10",
    "41a4249fb442b85fe0868f3ad43adf314728651813739338ed9351164b34c566f8cd6d511755fa97fa30acb818a49f6a",
    "cc2fd27eb2fb49f41cb9df061c21af970262e0cc875c51daa7fab6bfa38abe626398ca4b6f917e85be6ad70f6a2e1b55",
    "c6d9d59d21a8011e55fdc81988d67cfb726fe025bd72c49bb4844bc8d7e9779882d84d49b1c80a402b5a8054c6af9f38",
    "94f1",
);

/// Record B: the first record under `next_key(KEY)` (nonce 0 again), one
/// cell of `0xab`, no KEY_UPDATE (header `0001`).
const RECORD_B: &str = concat!(
    "0001ac88dd0931c9031f0251d69cf6d6b1b47d44d0aefa13e27f91d0c85dbe3aca642eaaaf378f8dd2d23c1ba90aa9f2",
    "f01365f24ac0a8fbc4d41c4e6c6205ccdb4bd0bbed49b411bdab12b0a25470986fceef9573526c54957559fc69e00c74",
    "9a7999d596f721ac08bad8ea18d75d584ec7289c27cff6b97c634171abe00a7edded8c16b2f95c4f72913a8c5d4bf479",
    "ce186d8664579b07a346640c25010937b056912566a07d3819f8e7459a26ab2ceb7049beb250e8619a4d22f7eff6e445",
    "1f37a15eb7fb6a6f8799bfdb52a5601b1f6b58d39114595777a9f304c5922f27e0169df60dd9187dcd550d74eb32036c",
    "6e2bfb941b78a3dfe16ec07c7fabeb064f002817603407805c364930004521438943330162faa1d89a23bbb39e321e93",
    "f53395c8db139061b3c020bd824b772b9c81a12f354eaa1a50fe153ee08cc2ef00af22d5afe2537e250d35a3e9dadaff",
    "5c1ac591e9ac91a81f77fceb339e2749b81b3e23661423111dfbf0d3489f42a66f7c4296a21fc5fed8eb064c2c3ae7bc",
    "d2fcbd0dd4750f24f88d7ca2dbf7b15c36d96652af276580eb3bc7336d0dd20ae8c29e62a45134f588dcdca1c9ba3b6a",
    "db8a9826fb196b5ebff91ed0a2a55dc69b9915b572c14f393d0ff43167dc708f3c16551cd2094a1ed55d88438b6f88e6",
    "915536c7972944a0f460f87f31ff88e34f86dcb5d8f63d329aeb412c9b68bace3787b83a263338c4cb2a23b3ec24266f",
    "77fe4d53bf4cf896c3af268935f97dae8fad39d4bfc641dc5d68fc5b70a91fc8b344ae023eddbe2dfa745ad961b26f2c",
    "0565218c54475f18a337214718fb302fc1c9842aaface30eb41d7f40cac8ccbbf9d292b437232d771c29b30a1bdc7eb8",
    "8e1c2b11106df64acadc74fd1abfa86f0a2f03b4637da972bd87fd55ef41b76c8c5c6fa3ac682e9f736bac08b07215e8",
    "e9cb2ad04d59976b53c8301bf7e87d10c1c877ce0200f00368e168140d0680640dc3ecd86f68504c1dd1cf6961cc26e6",
    "41d20f8fd08441dd2038a548734be637e8e4e752e447cd8245d55192a8a908aed933c96909185e99ec52bdcc3b2676f9",
    "43d5eda6880ac3e66b3a23f051d9362964ac3ecae8ae34af4b1e27b39fb0a63dc58aba40913695013c444a36ca9dcbfa",
    "269ab2a3847160cba8400fb0f76c3f42a50734f3a4cc6d274342adc0dc9489104eb0f8905101f6d1262089cee6bb17ec",
    "8bd7f69c024b994afe775f27e6d9f6e50723020d7168d32755280a09608e7755c573cb517b5c13ed455ea2ec3bbcd363",
    "55713d96b99ffae148c9a429d1d0895ae2731b5ded4db2b7a9d66b8a9dfebd615b59e61ca11bc26c42c92edd08c96715",
    "a1f50668ea92a682bfc6d7d4c5558183a2ec90bff55389467e654fc20e270b0037a00eb4a80d5279b8993000bbd48d6d",
    "9e8a0db0afb2fecf23945cbfc565fad4742a1170cb42196d5922f85205d9a2e1cbc208497e4d521668194c22eaecffaf",
    "b3f5de4352e30f501d56ec8a584310a1f4f98a26ab6a673756c9beb4ce46bbfa011a3c074641da7b56ea2ccc2d932928",
    "5f1f0edfaadf6f1ad4ef719073e61cbe6ec24838f4e465f7beeb53193da68827cc3a583b2b591d51c5df31c1b9fe8ec7",
    "34a001f1d4424fb0f4fccbd7ea5b711cbd7d3d00fda639e9e320dc7a28aee848787b4c97c0e7068f632591f38ba46c09",
    "a67f02b0be8f6be2350ae8334cfbdc2f75b6a2bd5d5dccb1ba9826303504a82dc156c60acf952af5e68a91397b6b6915",
    "00d08eaf324842b68db5297e6f607b77cb44c7b19156c293b4dee9421a4e6570fcac8fd1750e4c7f0f4d051bb4eede5e",
    "2ba0ab1356168aa39d3d3d0a7a95aa985f26ca524fddfa7b3f56fde72ef4256db074ab83821510c0028aa155fa5ac34c",
    "4078dbef0235b83f439d2fd3e16cff8b1ced21fb6ed9ef43cf52f8fe7c9d444e03bf2c5d72121e3ff678d0f1be08e2cc",
    "6ea96e15e8caab90b873cc0dab19925c3185fe680c010e60ec1ec4f6a33f8e7eca89affaed747bb77de6c83e6863138c",
    "875c60debf83eee92be7835c9cb6b7865a33293465709d7b0274b46bb3522b361f05b80834cf8dc558b54ae79934435e",
    "f9b11ab8b77852c94530182cdf456ae031b65263dcc5953d098257ccc8a5d35cdc661813f1cf109c1e007664a76796dd",
    "16c890c8f2412786541aee53071d6ab89d48e2941307c114d3918f29d55a264c5f376f6e9d49e6b541cc719d0a905484",
    "9a17aa51283b1893efd08191d9a1f785c78ed054b831313d998bab5a7d4d2b78754a406c6629632d39e4cd7d599d43cd",
    "f2e75ce999d8e4538afc1f44f4c0f4ad17a222ede27c7c652b5fc24a1fab6cddeeb0787c950523529dd846ae8664f7e8",
    "0bf61cfa4e9e27d21199f9bf3f5679ecc10f718007297b8e73b13dd5f4bbb28c08a578c120bd520a19af217f1dfc6b8b",
    "3eb14a758a75f87770f6532e9f5f33b5af52200943bace961fc6d2c89bb172919acec3c83d209860769a6e8024277cb0",
    "505771e4b23c0de71519f282f55165a54abda9506c61c1bc7b17024c7ccf585a07277135e989b35bfbd5e72aede92ae6",
    "c017e8d3d32e2d83fa3c48463d57dfe566a76a0c4e8a7890478aebf583c6d0aeee5038633e2ae01a4d1ec8dacbce634e",
    "cbaf53a6f23c96791301bbea119b49cb824316a89246ddce49c424e7c7417e7f7363ab3305e8460914de6108c6c427f9",
    "d40321e5f1d9edd4a12dec22c8f9fad043ddeadc356af5588a932b08c29813825642b9ba00b82cb48c79c63e31b2832b",
    "7a7c8cc14d0b72854a1efd82bbeae767f1a5cab0f76bd365151277d23ebb7f2b704bfd32cf5373595183005b7349725b",
    "90979831048328d9831f02f35e609ac2ed5e7d840571fd3b83ad6ddfa10d56dbc77b1923b5aafc2c89464716dc82f48b",
    "ac34",
);

fn cell_a() -> Vec<u8> {
    (0..CELL_LEN).map(|i| i as u8).collect()
}

fn cell_b() -> Vec<u8> {
    vec![0xab; CELL_LEN]
}

fn unsealed(cell: &[u8]) -> Vec<u8> {
    let mut rec = vec![0u8; RecordSealer::record_len(1)];
    rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + CELL_LEN].copy_from_slice(cell);
    rec
}

fn open(o: &mut RecordOpener, rec: &mut [u8]) -> Result<(), CryptoError> {
    let (hdr, body) = rec.split_at_mut(RECORD_HEADER_LEN);
    let hdr = [hdr[0], hdr[1]];
    let (n, len) = RecordOpener::parse_header(hdr)?;
    assert_eq!((n, len), (1, CELL_LEN + RECORD_TAG_LEN));
    o.open(hdr, body)
}

#[test]
fn next_key_vectors() {
    assert_eq!(hex::encode(next_key(&[0x11; 32])), NEXT_KEY_11);
    assert_eq!(hex::encode(next_key(&KEY)), NEXT_KEY_22);
}

#[test]
fn sealing_reproduces_the_records() {
    let mut s = RecordSealer::from_key(KEY);
    let now = Instant::now();
    // Retire the key after one record, then keep the next one.
    s.set_rekey_policy(RekeyPolicy {
        max_uses: 1,
        max_age: Duration::MAX,
    });
    let mut a = unsealed(&cell_a());
    s.seal(&mut a, now).unwrap();
    assert_eq!(hex::encode(&a), RECORD_A);
    s.set_rekey_policy(RekeyPolicy::default());
    let mut b = unsealed(&cell_b());
    s.seal(&mut b, now).unwrap();
    assert_eq!(hex::encode(&b), RECORD_B);
}

#[test]
fn the_records_decode() {
    let mut a = hex::decode(RECORD_A).unwrap();
    let mut b = hex::decode(RECORD_B).unwrap();
    assert_eq!(u16::from_be_bytes([a[0], a[1]]), RECORD_KEY_UPDATE | 1);
    assert_eq!(u16::from_be_bytes([b[0], b[1]]), 1);
    let mut o = RecordOpener::from_key(KEY);
    open(&mut o, &mut a).unwrap();
    assert_eq!(
        &a[RECORD_HEADER_LEN..RECORD_HEADER_LEN + CELL_LEN],
        &cell_a()[..]
    );
    open(&mut o, &mut b).unwrap();
    assert_eq!(
        &b[RECORD_HEADER_LEN..RECORD_HEADER_LEN + CELL_LEN],
        &cell_b()[..]
    );
}

#[test]
fn record_b_is_under_the_next_key_only() {
    // The old key at the same nonce (0) does not open it...
    let mut b = hex::decode(RECORD_B).unwrap();
    assert_eq!(
        open(&mut RecordOpener::from_key(KEY), &mut b),
        Err(CryptoError::BadTag(0))
    );
    // ...the next key does.
    let mut b = hex::decode(RECORD_B).unwrap();
    open(&mut RecordOpener::from_key(next_key(&KEY)), &mut b).unwrap();
    assert_eq!(
        &b[RECORD_HEADER_LEN..RECORD_HEADER_LEN + CELL_LEN],
        &cell_b()[..]
    );
}

#[test]
fn a_record_a_without_its_flag_does_not_open() {
    let mut a = hex::decode(RECORD_A).unwrap();
    a[0] &= 0x7f;
    assert_eq!(
        open(&mut RecordOpener::from_key(KEY), &mut a),
        Err(CryptoError::BadTag(0))
    );
}
