"""Corpus-level translation scores: the one code path for validation, test and `seqkit evaluate`."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float | str]:
    """sacreBLEU, chrF and exact match of detokenized hypotheses against raw references.

    Returns the scores (BLEU and chrF on 0–100, exact match on 0–1) and the sacreBLEU
    signatures that say how they were computed.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("no sentences to score")
    bleu, chrf = BLEU(), CHRF()
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)
    return {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "exact_match": exact,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def paper_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Lowercased BLEU on 13a-tokenized text, the figure Multi30k papers and tutorials report."""
    return BLEU(lowercase=True).corpus_score(hypotheses, [references]).score
