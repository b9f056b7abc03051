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
use veilnet_crypto::rekey::{next_key, MIN_USES_PER_KEY};
use veilnet_crypto::{CryptoError, RekeyPolicy};

/// `next_key([0x11; 32])`: HKDF-SHA256, empty salt, info `"veilnet rekey v1"`.
const NEXT_KEY_11: &str = "0fd6d184842806b69acb093e32ccac5f6be2cbb1664e8d8163284ef05e93cf21";

/// `next_key([0x22; 32])`, the key after record A.
const NEXT_KEY_22: &str = "fa47796674a0e0d51a51e9c63c1fabbed0072a319a4bcd174c3abefe34ba5741";

/// The session key of the vectors' sending direction.
const KEY: [u8; 32] = [0x22; 32];

/// Record A: the 16th record under [`KEY`] (nonce 15: a key serves at least
/// `MIN_USES_PER_KEY` records), one cell of bytes `i as u8`, carrying
/// KEY_UPDATE (header `8001`). The 15 records before it are [`prefix`].
const RECORD_A: &str = concat!(
    "8001f615348d3851cb67cdee95caf254b7532635b7086538955a7509b25f541dd19f3c49bf54490d31a53d4f64aab347",
    "5beccbc2c254f0d2ccaa8804c8f9f27f4e720d14f8eafb4708ec341878750819bed362b7686cc39c3d4fb73df75e8fc8",
    "8a39115af744b65960379caf8eb4b16ad63f27e29f633c508395423b137a4ec79ae3a72cdd50529701d829c64142b744",
    "be7c1c7323e1b9af668f9cca16efc1f78f3d1cc097e95f8472d7224e339ffafd88088a6be4a80c81b327285ddb53c906",
    "33c9ef755a95fc5c578efd25b6c8452078c65ab657f67efa740a009cad4d71cdc4cb6a474ac7fb5fb6a58817092f6b51",
    "edb8b1313a0621ee255a45e095e50b5f6ae58a87ecea44038435ac952ec59d1ab45b5bd80abea006c2a1931f62e7b92b",
    "e249e3ac0a18b7e85799e570aa474494077eeb220c9ff5421dd6fd4b38614f26bdbec0cabc7031b4afe4f3f951b85f3d",
    "9d2ed9c7d098cd0d6e222a4cfb48f90bcd8fd7efbfd791f7778a7a4448eb80fdf2c83d0a14cf8deb433d05ce0b3bb74d",
    "93faf0deb9d94bc4fb5d665db9119bfd4082ec0064fcd47f1433b3ee8184b47ff47b9f787f3e088ec194080927e4e0d2",
    "2892b1db3061629b1f016aef8c9611737df1ef8521ffe3b24e88ff966b24dd5141f1346b2d7a3bf2ac9d2d18564277f4",
    "cf7e50e48b80afac2d81bd759ed13214c266de815e32d0fe469249e8ad9dca73923b0f0f81852fb1364e986ca00f08c3",
    "3e2aa83ad7bc05023e0b7991448f52ee1a73492c47a2711b2463e135c4c48e90a0b046cde521e5d61110a59c45f9751d",
    "51001d198836af0809bbb76bc327922fc7c302f3d14dbde02e808156a64ae232ca04d8cda4d3f88a604dedf741539b71",
    "284ad2f483bf05fff3b06e46fffe6ff49f5d3c2795f9718eb9a419e9a6d14e98ea660aa1111ac6e4af670d029323c487",
    "851e1b8af34a1d5b3468514e21413bd9bfb11c9691310a174f80b080b1425a34b8a02c147f7d8909e9d04f8bfc2c1453",
    "48873cbd680666c3744e44afcb5a2cb9a68dbf2869aa88672f9982640badcd807d742adb66dbf31234b57e623b195b52",
    "28ca909e8e7121e2ab0755ad25d0176ce374f385c82bf169367ab16cd7886aa9340dcd1ca3da8cad8bb9ed32579c4da3",
    "5a2f2e484410722ab18fa07953261a2e994c9b0a63b3d3235eb134022c214368f311821a126c49cd9089594dca137c04",
    "1e2039ba414abf499353f6529af28cd1c0920de3dd108aaa68a3ac6c6fb68ff69b68961a55ea62c0626c7b682160ed97",
    "78f06ed8a64341802f9ee6fdba511537d3c67056cc095d04669f931e86a128f7d3f77f4dae82ed1548eb1aabb86eea9a",
    "2cb7692d9493f53becef9863091d013d42fdc09c5ac3990cbd51f7d2678318097420c0873e6972e28e0ffe4a6099bf38",
    "f4dacf45a35daaf74c6ac82699894ae411c29298d53af30cf6ed3e4b83f7ece9159a2df4dde8b7dfbee19c0b0ebc3de6",
    "41b570bfd07c81121e1f7e6f42c8ddfed1586483462d65aaca7bf21b6442573d31d4b5b709967a83b51de6de5490e913",
    "0773402fc089b0821fba7aa4a8e505dbb98da57dffad5ae244ca20284b2c75fe65b625f90ba1d5a232498e9ee4d9b014",
    "23b4c3802cca905533f57223b392abb630311856d7fa6fa6792d9ccbeca931e5a1a721564f50a65ba94ab561caa2878a",
    "7adb4b9e68aadb380a7599855553910025daca60547fce8b2e8f2989db215dd74959893c1c566c75575457ff9c03dd2a",
    "aa725490a14e08fc1b889a58bb9eb13e87f8d8f8bdbbc5dcb408fefb0a8ea868ff74b5c55a7da758811f76ee5e39c385",
    "4f788315cf0d83dd9a45e32b2d55bc086059d9b3ed8d760ce27fcda2d439eb0ac5cd7258b3eed667be4aff01f1303185",
    "ab467d901ab570a4db443892d1b9958c174882a9bd013f37a29424a364fedc27dd0c09cf06a47d320e1f63f1d812b8d1",
    "dd0fed61f1d2d2a8b8f8a91f71e92142aabb33a928da4a1508c1e4783e32954dcd3de685bb0e95df4397ed435f64a443",
    "a1e165222ca22542a921d0aa6a615a05f4feb0d54de9b828eb596e2f02c26efc53a72740d425babfb21b7dcc71b01a59",
    "893200eaa89591118aa10ccaedbc8070e0f2a80fab7b2d97f77c107d04b742329767d5e8a6611f8879701133fa5ffc81",
    "944a5f9d747edc88b4bd1c7b6ea4d22d5e9953659077d59aa6e002aa7e90f643e6ee19c07c10424a06ce98d798211621",
    "bd59dfcacfa72d38bda4628ca424fae341d61adae19dd1cbaf5eb228a543b4efce311ef1d238a260cc4b69fc8499bcdb",
    "320296d34908a67e472a14276c34abb16c09d7564806c7e78847498af591f53095258b90bcc094f1409679de43c4335e",
    "0e4009d4f8e150c1198fdb9c31bb042b6c1d54a9d4cf830e8aeb5bdaaf7746e691b50360f1f33c5804ff1d11cb427b7b",
    "88fa5ea2dd4b2991467c3f3ab5b5cc28f6656e60e24a9915056e99a8afb06932f03006074c30d48e90b643fbc4127d38",
    "ad8c3092db35726cec97de546ff28683bef8a3c2c5786b8fdc810f050b720c5f368494f306025f15fd87d7b7bf045147",
    "de89f6db7865c75270b2aeaa07cc7114685e76ecde5ab13624ba2a76da9eb5739888a12b92e008201550c57b9476d4c4",
    "df52f701e6810197370876c361069316125b21585d50de8300df1b6ca4cd5e1757e3028bf5368700217bf470534b430e",
    "a334006d192c0d221c2ebc815b7acbbd56b3eb3419ad2d4ee9bab099a81b995798920a02d2721c6ce2b3f7024c85e617",
    "369639add2269ea0e128486d9fec9ab913a92cfde6823db422c7be9be6f54d0a2a424f1bdc252c4d7096d32b9e7b1b53",
    "09098978539987eac4360d537ddd792e2c37a3f4ac1fa0b8fecc9bcf873ac041d09db9525f47f3f748aaad8ed0dea260",
    "26f6",
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

/// The records before A: `MIN_USES_PER_KEY - 1` records of one zero cell.
fn prefix(s: &mut RecordSealer, now: Instant) -> Vec<Vec<u8>> {
    (1..MIN_USES_PER_KEY)
        .map(|_| {
            let mut r = unsealed(&[0u8; CELL_LEN]);
            s.seal(&mut r, now).unwrap();
            r
        })
        .collect()
}

/// An opener of [`KEY`] that has opened the records before A.
fn opener_at_a() -> RecordOpener {
    let mut o = RecordOpener::from_key(KEY);
    for mut r in prefix(&mut RecordSealer::from_key(KEY), Instant::now()) {
        open(&mut o, &mut r).unwrap();
    }
    o
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
    // Retire the key after its 16th record, then keep the next one.
    s.set_rekey_policy(RekeyPolicy {
        max_uses: MIN_USES_PER_KEY,
        max_age: Duration::MAX,
    });
    prefix(&mut s, now);
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
    let mut o = opener_at_a();
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
        open(&mut opener_at_a(), &mut a),
        Err(CryptoError::BadTag(0))
    );
}
