"""Training surrogates: the plain loop and the stages around it (train, fine-tune, error heads, studies).

Holds `loop` (`fit`), `train` (data, logging, export, registration), `confidence` (an error head),
`adaptation` (fine-tuning on measurements and its study) and `capacity` (accuracy against speed
over sizes). May import `registry`, `builds`, `runtime`, `data`, `models`, `blocks` and below.
"""
