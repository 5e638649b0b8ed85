"""The encoder matches the sentence-transformers library on the same model."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference.encoder import Encoder, bundled_model_dir

TEXTS = [
    "hello",
    "Paris",
    "cat",
    "A",
    "?",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models map text to vectors.",
    "I would like to book a table for two at eight tonight.",
    "Vector databases support approximate nearest neighbour search.",
    "The stock market closed higher on Friday after a volatile week.",
    "Please reset my password; I cannot log in since yesterday.",
    "Photosynthesis converts light energy into chemical energy.",
    "The Eiffel Tower is one of the most visited monuments in the world.",
    "Is it going to rain tomorrow in London?",
    "GPU memory bandwidth limits the speed of exact search.",
    "She sells sea shells by the sea shore.",
    "def add(a, b): return a + b",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.com/path?query=1",
    "1234567890",
    "🙂🚀✨",
    "naïve café résumé",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le chat dort sur le canapé depuis ce matin.",
    "El perro corre en el parque con su dueño.",
    "Il treno per Roma parte alle nove.",
    "O gato está dormindo na janela.",
    "De kat slaapt op de vensterbank.",
    "Кошка спит на подоконнике.",
    "猫は窓辺で寝ています。",
    "我喜欢在周末读书。",
    "고양이가 창가에서 자고 있다.",
    "القطة نائمة على حافة النافذة.",
    "बिल्ली खिड़की पर सो रही है।",
    "Η γάτα κοιμάται στο παράθυρο.",
    "Kedi pencerenin kenarında uyuyor.",
    "Kissa nukkuu ikkunalaudalla.",
    "   leading and trailing spaces   ",
    "UPPERCASE TEXT SHOUTS LOUDLY",
    "mixed CASE and Numbers 42 and symbols #$%",
    "line one\nline two\nline three",
    "tab\tseparated\tvalues",
    "a" * 50,
    "word " * 40,
    "The committee postponed the vote until next month.",
    "Thermodynamics governs heat engines and refrigerators.",
    "An apple a day keeps the doctor away.",
    "Quantum computers use qubits instead of bits.",
    "The museum opens at ten and closes at six.",
    # Longer than the 256-token window: both sides must truncate the same way.
    " ".join(f"token{i} is part of a very long passage" for i in range(120)),
    "long " * 600,
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder("all-MiniLM-L6-v2", bundled_model_dir(), max_seq_tokens=256)


def test_matches_sentence_transformers(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    assert len(TEXTS) >= 50

    ours = encoder.encode(TEXTS).vectors
    theirs = reference.encode(TEXTS, batch_size=16, normalize_embeddings=True)

    cosines = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    assert cosines.min() >= 0.999, f"worst text: {TEXTS[int(cosines.argmin())]!r}"


def test_batch_composition_does_not_change_a_vector(encoder: Encoder) -> None:
    alone = encoder.encode(["short"]).vectors[0]
    padded = encoder.encode(
        ["short", "a much longer sentence that forces padding"]
    ).vectors[0]

    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_fingerprint_changes_with_what_defines_the_space(encoder: Encoder) -> None:
    from dataclasses import replace

    identity = encoder.identity

    assert identity.dim == 384
    assert replace(identity, dim=768).fingerprint != identity.fingerprint
    assert replace(identity, revision="other").fingerprint != identity.fingerprint
    assert replace(identity, pooling="cls").fingerprint != identity.fingerprint
