//! TLS 1.3 record protection that keeps each direction's traffic key (at most 32 bytes) instead
//! of an expanded AEAD context (aws-lc's `EVP_AEAD_CTX`, ~590 bytes on the heap whatever the
//! cipher), and expands the key for the one record it seals or opens.
//!
//! An idle TLS connection holds two such contexts for its whole life, one per direction:
//! ~1.15 KiB of the ~3.7 KiB TLS adds to an idle WebSocket. Expanding the key costs one key
//! schedule (AES round keys and the GHASH table, or nothing for ChaCha20) and one allocation
//! (~1 300 instructions for AES-GCM, `bench/RESULTS.md`); each worker thread keeps the key it
//! expanded last per direction, so consecutive records of one connection (a burst, a large
//! body) pay it once, and a fan-out (one record per connection) pays it per record. For
//! listeners of many mostly idle connections that is the better trade; the Link listener (few
//! connections, many records) keeps rustls's own suites.
//!
//! The records are the ones rustls's aws-lc-rs provider writes (same AEADs, nonces — the IV
//! XOR the sequence number — and additional data); only when the key is expanded differs.
//! Like aws-lc's TLS 1.3 AES-GCM mode, each direction refuses a sequence number that does not
//! grow. TLS 1.2 suites are left as the provider has them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, UnboundKey};
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::cipher_suite as base;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm,
    UnsupportedOperationError, make_tls13_aad,
};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};

/// `provider` (aws-lc-rs's: the twins reuse its hash and HKDF) with its TLS 1.3 AES-GCM and
/// ChaCha20-Poly1305 suites replaced by ones that keep keys unexpanded (same suites, same
/// order, same key exchange and signatures).
pub fn compact_provider(provider: &CryptoProvider) -> Arc<CryptoProvider> {
    let mut provider = provider.clone();
    for suite in &mut provider.cipher_suites {
        if let SupportedCipherSuite::Tls13(tls13) = suite
            && let Some(compact) = compact_suite(tls13.common.suite)
        {
            *suite = SupportedCipherSuite::Tls13(compact);
        }
    }
    Arc::new(provider)
}

/// The compact twin of the aws-lc-rs TLS 1.3 suite `id`, if there is one.
fn compact_suite(id: CipherSuite) -> Option<&'static Tls13CipherSuite> {
    static AES_128: LazyLock<Option<Tls13CipherSuite>> =
        LazyLock::new(|| twin(&base::TLS13_AES_128_GCM_SHA256, &COMPACT_AES_128));
    static AES_256: LazyLock<Option<Tls13CipherSuite>> =
        LazyLock::new(|| twin(&base::TLS13_AES_256_GCM_SHA384, &COMPACT_AES_256));
    static CHACHA: LazyLock<Option<Tls13CipherSuite>> =
        LazyLock::new(|| twin(&base::TLS13_CHACHA20_POLY1305_SHA256, &COMPACT_CHACHA));
    let suite = match id {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => &AES_128,
        CipherSuite::TLS13_AES_256_GCM_SHA384 => &AES_256,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => &CHACHA,
        _ => return None,
    };
    suite.as_ref()
}

/// `suite` (an aws-lc-rs TLS 1.3 suite) with its AEAD replaced by `aead`.
fn twin(suite: &SupportedCipherSuite, aead: &'static CompactAead) -> Option<Tls13CipherSuite> {
    let SupportedCipherSuite::Tls13(suite) = suite else {
        return None;
    };
    Some(Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: suite.common.suite,
            hash_provider: suite.common.hash_provider,
            confidentiality_limit: suite.common.confidentiality_limit,
        },
        hkdf_provider: suite.hkdf_provider,
        aead_alg: aead,
        quic: suite.quic,
    })
}

static COMPACT_AES_128: CompactAead = CompactAead {
    algorithm: &aead::AES_128_GCM,
};
static COMPACT_AES_256: CompactAead = CompactAead {
    algorithm: &aead::AES_256_GCM,
};
static COMPACT_CHACHA: CompactAead = CompactAead {
    algorithm: &aead::CHACHA20_POLY1305,
};

/// A TLS 1.3 AEAD whose encrypters and decrypters keep the key, not its expansion.
struct CompactAead {
    algorithm: &'static aead::Algorithm,
}

impl Tls13AeadAlgorithm for CompactAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Sealer {
            keys: Keys::new(self.algorithm, key, iv, SEAL),
        })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Opener {
            keys: Keys::new(self.algorithm, key, iv, OPEN),
        })
    }

    fn key_len(&self) -> usize {
        self.algorithm.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(if self.algorithm == &aead::AES_128_GCM {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        } else if self.algorithm == &aead::AES_256_GCM {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        } else {
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
        })
    }

    /// Never: a context per record is not aws-lc's validated TLS 1.3 mode (this build has no
    /// FIPS module either).
    fn fips(&self) -> bool {
        false
    }
}

/// One direction's key material and the next sequence number it accepts.
struct Keys {
    algorithm: &'static aead::Algorithm,
    key: AeadKey,
    iv: Iv,
    next_seq: u64,
    /// Unique per `Keys` (a KeyUpdate makes new ones); its low bit is the direction, which
    /// picks the slot of [`EXPANDED`].
    id: u64,
}

/// Sealing and opening directions, the low bit of [`Keys::id`].
const SEAL: u64 = 0;
const OPEN: u64 = 1;

/// Source of [`Keys::id`]s (in steps of two; the direction is added).
static NEXT_ID: AtomicU64 = AtomicU64::new(2);

thread_local! {
    /// The key this worker thread expanded last, per direction, with its `Keys::id`: the
    /// records of one connection that follow each other on a thread (a burst, a large
    /// body) expand the key once; a fan-out, one record per connection, expands it for each.
    /// At most two contexts per thread; a `Keys` clears its slot when dropped on the thread
    /// that holds it (elsewhere the slot is overwritten by the thread's next record).
    static EXPANDED: [RefCell<Option<(u64, LessSafeKey)>>; 2] =
        const { [RefCell::new(None), RefCell::new(None)] };
}

#[cfg(test)]
thread_local! {
    /// Key expansions on this thread (tests count cache hits with it).
    static EXPANSIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Keys {
    fn new(algorithm: &'static aead::Algorithm, key: AeadKey, iv: Iv, direction: u64) -> Keys {
        Keys {
            algorithm,
            key,
            iv,
            next_seq: 0,
            id: NEXT_ID.fetch_add(2, Ordering::Relaxed) | direction,
        }
    }

    fn expand(&self, error: &Error) -> Result<LessSafeKey, Error> {
        #[cfg(test)]
        EXPANSIONS.with(|count| count.set(count.get() + 1));
        UnboundKey::new(self.algorithm, self.key.as_ref())
            .map(LessSafeKey::new)
            .map_err(|_| error.clone())
    }

    /// Runs `f` with the expanded key and the nonce of record `seq` (the thread's cached
    /// expansion when it is this direction's), or fails with `error` when `seq` is below
    /// the next one this direction accepts (a record that was sealed or opened already).
    fn with_key<R>(
        &self,
        seq: u64,
        error: Error,
        f: impl FnOnce(&LessSafeKey, aead::Nonce) -> Result<R, Error>,
    ) -> Result<R, Error> {
        if seq < self.next_seq || seq == u64::MAX {
            return Err(error);
        }
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0);
        let slot = (self.id & 1) as usize;
        let mut f = Some(f);
        let cached = EXPANDED.try_with(|slots| {
            let Ok(mut cached) = slots[slot].try_borrow_mut() else {
                return None;
            };
            if !matches!(&*cached, Some((id, _)) if *id == self.id) {
                match self.expand(&error) {
                    Ok(key) => *cached = Some((self.id, key)),
                    Err(error) => return Some(Err(error)),
                }
            }
            let (_, key) = cached.as_ref()?;
            let f = f.take()?;
            Some(f(key, nonce))
        });
        match (cached, f) {
            (Ok(Some(result)), _) => result,
            // No thread-local (thread teardown) or it is in use: expand for this record only.
            (_, Some(f)) => {
                let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0);
                f(&self.expand(&error)?, nonce)
            }
            (_, None) => Err(error),
        }
    }

    /// Record `seq` was sealed or opened: only later ones are accepted from now on (a record
    /// that failed to open, as rustls's trial decryption may see, does not count).
    fn used(&mut self, seq: u64) {
        self.next_seq = seq + 1;
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let slot = (self.id & 1) as usize;
        let _ = EXPANDED.try_with(|slots| {
            if let Ok(mut cached) = slots[slot].try_borrow_mut()
                && matches!(&*cached, Some((id, _)) if *id == self.id)
            {
                *cached = None;
            }
        });
    }
}

struct Sealer {
    keys: Keys,
}

impl MessageEncrypter for Sealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        self.keys.with_key(seq, Error::EncryptError, |key, nonce| {
            key.seal_in_place_append_tag(nonce, Aad::from(make_tls13_aad(total_len)), &mut payload)
                .map_err(|_| Error::EncryptError)
        })?;
        self.keys.used(seq);
        // All TLS 1.3 records carry TLS 1.2 as their legacy version (RFC 8446, 5.1).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + self.keys.algorithm.tag_len()
    }
}

struct Opener {
    keys: Keys,
}

impl MessageDecrypter for Opener {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < self.keys.algorithm.tag_len() {
            return Err(Error::DecryptError);
        }
        let aad = Aad::from(make_tls13_aad(payload.len()));
        let plain_len = self.keys.with_key(seq, Error::DecryptError, |key, nonce| {
            key.open_in_place(nonce, aad, payload)
                .map(|plain| plain.len())
                .map_err(|_| Error::DecryptError)
        })?;
        self.keys.used(seq);
        payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::RootCertStore;
    use rustls::crypto::cipher::OutboundChunks;
    use rustls_pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::server::tls_stream;

    const SUITES: [CipherSuite; 3] = [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ];

    /// A server config on the compact provider and a stock rustls client config offering only
    /// `suite`.
    fn configs(suite: CipherSuite) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = cert.cert.der().clone();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let stock = rustls::crypto::aws_lc_rs::default_provider();
        let server = rustls::ServerConfig::builder_with_provider(compact_provider(&stock))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut client_provider = stock;
        client_provider.cipher_suites.retain(|s| s.suite() == suite);
        assert_eq!(client_provider.cipher_suites.len(), 1);
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    #[test]
    fn every_tls13_suite_is_replaced_in_order_and_tls12_is_kept() {
        let stock = rustls::crypto::aws_lc_rs::default_provider();
        let compact = compact_provider(&stock);
        let ids = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&compact), ids(&stock));
        for (mine, theirs) in compact.cipher_suites.iter().zip(&stock.cipher_suites) {
            match (mine, theirs) {
                (SupportedCipherSuite::Tls13(mine), SupportedCipherSuite::Tls13(theirs)) => {
                    assert!(SUITES.contains(&mine.common.suite));
                    assert!(!std::ptr::eq(*mine, *theirs), "{:?}", mine.common.suite);
                    assert_eq!(mine.aead_alg.key_len(), theirs.aead_alg.key_len());
                }
                (SupportedCipherSuite::Tls12(mine), SupportedCipherSuite::Tls12(theirs)) => {
                    assert!(std::ptr::eq(*mine, *theirs));
                }
                _ => panic!("suite kinds differ"),
            }
        }
    }

    /// Each suite against a stock rustls client: data both ways, then a KeyUpdate from the
    /// client (which asks the server to update its keys too), then data both ways again.
    #[tokio::test]
    async fn every_suite_serves_a_stock_client_across_a_key_update() {
        for suite in SUITES {
            let (server_config, client_config) = configs(suite);
            let (server_io, client_io) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(tls_stream::accept(server_config, server_io));
            let mut client = tokio_rustls::TlsConnector::from(client_config)
                .connect(ServerName::try_from("localhost").unwrap(), client_io)
                .await
                .unwrap();
            let mut server = server.await.unwrap().unwrap();
            let negotiated = client.get_ref().1.negotiated_cipher_suite().unwrap();
            assert_eq!(negotiated.suite(), suite);
            for round in 0..2 {
                if round == 1 {
                    client.get_mut().1.refresh_traffic_keys().unwrap();
                }
                let ping = format!("ping {round} over {suite:?}");
                client.write_all(ping.as_bytes()).await.unwrap();
                client.flush().await.unwrap();
                let mut got = vec![0u8; ping.len()];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(got, ping.as_bytes());
                // Several records, so that the server's own KeyUpdate (sent once it read the
                // client's) is followed by records under its new key.
                for part in 0..3 {
                    let pong = format!("pong {round}.{part}");
                    server.write_all(pong.as_bytes()).await.unwrap();
                    server.flush().await.unwrap();
                    let mut got = vec![0u8; pong.len()];
                    client.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, pong.as_bytes(), "{suite:?}");
                }
            }
        }
    }

    /// A second connection of a client resumes the first one's session (the server's
    /// stateful session cache and its TLS 1.3 tickets work with the compact suites).
    #[tokio::test]
    async fn a_client_resumes_its_session() {
        let (server_config, client_config) = configs(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (server_io, client_io) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(tls_stream::accept(server_config.clone(), server_io));
            let mut client = tokio_rustls::TlsConnector::from(client_config.clone())
                .connect(ServerName::try_from("localhost").unwrap(), client_io)
                .await
                .unwrap();
            let mut server = server.await.unwrap().unwrap();
            // The tickets reach the client with the first data it reads.
            server.write_all(b"hello").await.unwrap();
            server.flush().await.unwrap();
            let mut got = [0u8; 5];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            kinds.push(client.get_ref().1.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ]
        );
    }

    /// A client whose record fails to authenticate gets an error, not a panic or garbage.
    #[tokio::test]
    async fn a_tampered_record_is_an_error() {
        let (server_config, client_config) = configs(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(tls_stream::accept(server_config, server_io));
        let client = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("localhost").unwrap(), client_io)
            .await
            .unwrap();
        let mut server = server.await.unwrap().unwrap();
        let (mut io, mut conn) = client.into_inner();
        std::io::Write::write_all(&mut conn.writer(), b"authentic?").unwrap();
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        *wire.last_mut().unwrap() ^= 0x80;
        io.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 64];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
    }

    fn plain(payload: &[u8]) -> OutboundPlainMessage<'_> {
        OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        }
    }

    /// Opens `wire` (one encoded record) with `opener` at `seq`.
    fn open(opener: &mut dyn MessageDecrypter, wire: &[u8], seq: u64) -> Result<Vec<u8>, Error> {
        let mut body = wire[5..].to_vec();
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut body,
        );
        opener.decrypt(msg, seq).map(|m| m.payload.to_vec())
    }

    /// The 32-byte-key suites: compact and stock records are the same bytes, and each opens
    /// the other's. (AES-128 is covered by the handshake test: a 16-byte `AeadKey` cannot be
    /// built outside rustls.)
    #[test]
    fn records_are_the_stock_providers_bytes() {
        for (compact, stock) in [
            (&COMPACT_AES_256, &base::TLS13_AES_256_GCM_SHA384),
            (&COMPACT_CHACHA, &base::TLS13_CHACHA20_POLY1305_SHA256),
        ] {
            let SupportedCipherSuite::Tls13(stock) = stock else {
                unreachable!()
            };
            let key = [7u8; 32];
            let iv = Iv::new([9u8; 12]);
            let mut mine_seal = compact.encrypter(AeadKey::from(key), Iv::new([9u8; 12]));
            let mut theirs_seal = stock
                .aead_alg
                .encrypter(AeadKey::from(key), Iv::new([9u8; 12]));
            let mut mine_open = compact.decrypter(AeadKey::from(key), Iv::new([9u8; 12]));
            let mut theirs_open = stock.aead_alg.decrypter(AeadKey::from(key), iv);
            for seq in 0..4u64 {
                let text = format!("record {seq}");
                assert_eq!(
                    mine_seal.encrypted_payload_len(text.len()),
                    theirs_seal.encrypted_payload_len(text.len())
                );
                let mine = mine_seal
                    .encrypt(plain(text.as_bytes()), seq)
                    .unwrap()
                    .encode();
                let theirs = theirs_seal
                    .encrypt(plain(text.as_bytes()), seq)
                    .unwrap()
                    .encode();
                assert_eq!(mine, theirs, "seq {seq}");
                assert_eq!(
                    open(&mut *theirs_open, &mine, seq).unwrap(),
                    text.as_bytes()
                );
                assert_eq!(
                    open(&mut *mine_open, &theirs, seq).unwrap(),
                    text.as_bytes()
                );
            }
        }
    }

    #[test]
    fn a_sequence_number_seals_once_and_a_failed_open_does_not_count() {
        let mut sealer = COMPACT_AES_256.encrypter(AeadKey::from([1u8; 32]), Iv::new([2u8; 12]));
        let first = sealer.encrypt(plain(b"a"), 0).unwrap().encode();
        assert!(matches!(
            sealer.encrypt(plain(b"b"), 0),
            Err(Error::EncryptError)
        ));
        let fifth = sealer.encrypt(plain(b"c"), 5).unwrap().encode();
        assert!(matches!(
            sealer.encrypt(plain(b"d"), 3),
            Err(Error::EncryptError)
        ));
        assert!(matches!(
            sealer.encrypt(plain(b"e"), u64::MAX),
            Err(Error::EncryptError)
        ));

        let mut opener = COMPACT_AES_256.decrypter(AeadKey::from([1u8; 32]), Iv::new([2u8; 12]));
        let mut tampered = first.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            open(&mut *opener, &tampered, 0),
            Err(Error::DecryptError)
        ));
        assert_eq!(open(&mut *opener, &first, 0).unwrap(), b"a");
        assert!(matches!(
            open(&mut *opener, &first, 0),
            Err(Error::DecryptError)
        ));
        assert_eq!(open(&mut *opener, &fifth, 5).unwrap(), b"c");
        assert!(matches!(
            open(&mut *opener, &[0u8; 5 + 8], 6),
            Err(Error::DecryptError)
        ));
    }

    /// What a connection keeps per direction: the key, IV, a counter and an id — no
    /// expanded context (aws-lc's is ~590 bytes).
    #[test]
    fn a_direction_keeps_only_its_key_iv_counter_and_id() {
        assert!(
            std::mem::size_of::<Sealer>() <= 80,
            "{}",
            std::mem::size_of::<Sealer>()
        );
        assert!(
            std::mem::size_of::<Opener>() <= 80,
            "{}",
            std::mem::size_of::<Opener>()
        );
    }

    fn expansions() -> u64 {
        EXPANSIONS.with(|count| count.get())
    }

    /// Consecutive records of one direction on a thread expand the key once; another
    /// connection's record takes the slot; a dropped direction leaves no expansion behind.
    #[test]
    fn a_burst_expands_once_and_a_dropped_key_leaves_the_thread() {
        let mut a = COMPACT_AES_256.encrypter(AeadKey::from([1u8; 32]), Iv::new([2u8; 12]));
        let mut b = COMPACT_AES_256.encrypter(AeadKey::from([3u8; 32]), Iv::new([4u8; 12]));
        let mut a_open = COMPACT_AES_256.decrypter(AeadKey::from([1u8; 32]), Iv::new([2u8; 12]));
        let start = expansions();
        let mut wire = Vec::new();
        for seq in 0..3 {
            wire.push(a.encrypt(plain(b"burst"), seq).unwrap().encode());
        }
        assert_eq!(expansions() - start, 1);
        b.encrypt(plain(b"other"), 0).unwrap();
        assert_eq!(expansions() - start, 2);
        a.encrypt(plain(b"again"), 3).unwrap();
        assert_eq!(expansions() - start, 3);
        // The opening direction has its own slot: it does not evict the sealer's.
        for (seq, record) in wire.iter().enumerate() {
            assert_eq!(open(&mut *a_open, record, seq as u64).unwrap(), b"burst");
        }
        assert_eq!(expansions() - start, 4);
        a.encrypt(plain(b"still"), 4).unwrap();
        assert_eq!(expansions() - start, 4);
        drop(a);
        assert!(EXPANDED.with(|slots| slots[SEAL as usize].borrow().is_none()));
        drop(a_open);
        assert!(EXPANDED.with(|slots| slots[OPEN as usize].borrow().is_none()));
        // b's expansion was replaced by a's: dropping b leaves the (empty) slot alone.
        drop(b);
        assert!(EXPANDED.with(|slots| slots[SEAL as usize].borrow().is_none()));
    }
}
