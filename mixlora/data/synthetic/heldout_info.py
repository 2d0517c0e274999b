"""What each held-out set is for: its closest training tasks, why it is still zero-shot, and its metric (the
manifest's entries)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalInfo:
    """Manifest entry of a held-out set: closest training tasks and why the set is still zero-shot."""

    closest: tuple[str, ...]
    reason: str
    metric: str


EVAL_INFO: dict[str, EvalInfo] = {
    "mme/existence": EvalInfo(("SynthShapes+shape_verification", "SynthShapes+color_verification",
                               "SynthCaptions+caption_matching", "SynthObjects+object_listing"),
                              "yes/no about a colour+shape conjunction among several objects is never asked",
                              "MME official: 100*acc + 100*acc+"),
    "mme/count": EvalInfo(("SynthCount+count_digits", "SynthCount+count_words", "SynthCount+count_by_shape"),
                          "counts are only ever produced, never verified with yes/no",
                          "MME official: 100*acc + 100*acc+"),
    "mme/position": EvalInfo(("SynthSpatial+relation_sentence", "SynthSpatial+relation_which"),
                             "relative position is never asked as a yes/no question",
                             "MME official: 100*acc + 100*acc+"),
    "mme/color": EvalInfo(("SynthShapes+color_verification", "SynthShapes+color_name"),
                          "colour yes/no is only trained on single-object images, never about one named shape "
                          "among several", "MME official: 100*acc + 100*acc+"),
    "mme/OCR": EvalInfo(("SynthGlyphs+word_transcription", "SynthShapes+color_verification"),
                        "words are only transcribed on plain text images, never checked against a quoted word on a "
                        "logo plate", "MME official: 100*acc + 100*acc+"),
    "mme/numerical_calculation": EvalInfo(("SynthGlyphs+arithmetic", "SynthShapes+color_verification"),
                                          "results are only computed, never verified with yes/no; the '=?' form is "
                                          "never shown", "MME official: 100*acc + 100*acc+"),
    "mme/scene": EvalInfo(("SynthScenes+background_classification", "SynthScenes+scene_name"),
                          "scene types are only named or picked from options, never verified with yes/no",
                          "MME official: 100*acc + 100*acc+"),
    "cvbench/Count": EvalInfo(("SynthCount+count_by_shape", "SynthCount+count_options"),
                              "upper-case lettered choices after 'Select from the following choices.' are never "
                              "trained", "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cvbench/Relation": EvalInfo(("SynthSpatial+relation_sentence", "SynthSpatial+relation_which"),
                                 "the 'where is A located with respect to B' multiple-choice form is never trained",
                                 "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cvbench/Depth": EvalInfo(("SynthDepth+occlusion_front", "SynthCompare+size_comparison"),
                              "'closer to the camera' is never asked; training only teaches occlusion and size",
                              "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cvbench/Distance": EvalInfo(("SynthSpatial+distance_judgement", "SynthSpatial+relation_which"),
                                 "comparing two distances to a reference object is never trained",
                                 "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cifar10": EvalInfo(("SynthShapes+shape_classification", "SynthShapes+shape_verification"),
                        "the fixed 10-way option list over all shapes is never trained (training shows 4 options)",
                        "accuracy on the label or option after normalisation"),
    "cifar100": EvalInfo(("SynthShapes+object_description", "SynthShapes+color_name",
                          "SynthShapes+shape_classification"),
                         "the 100-way colour+shape label set ('red circle') is never a training label",
                         "accuracy on the label after normalisation"),
    "mnist": EvalInfo(("SynthGlyphs+character_reading", "SynthGlyphs+arithmetic"),
                      "handwriting-like white strokes on black are never seen; training reads bitmap-font glyphs",
                      "accuracy on the digit"),
    "pope": EvalInfo(("SynthObjects+object_listing", "SynthShapes+shape_verification",
                      "SynthCaptions+caption_matching"),
                     "'Is there a X in the image?' over multi-object scenes, with popular and co-occurring "
                     "negatives, is never trained", "POPE: accuracy, precision, recall, F1, yes-ratio per split"),
    "vsr": EvalInfo(("SynthSpatial+relation_sentence", "SynthCaptions+caption_matching"),
                    "the True/False label set is never trained", "binary accuracy"),
    "snli_ve": EvalInfo(("SynthCaptions+caption_matching", "SynthCaptions+question_answerability"),
                        "the entailment/neutral/contradiction label set is never trained", "3-way accuracy"),
    "textvqa": EvalInfo(("SynthGlyphs+word_transcription", "SynthGlyphs+text_color"),
                        "reading the word on one named sign among several is never trained",
                        "VQA accuracy min(#matching answers / 3, 1) over `answers`"),
}
