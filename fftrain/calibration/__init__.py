"""Thresholds that fit the model they are applied to, from its own similarity scores.

    from fftrain.calibration.thresholds import far_at, threshold_at_far, upper_threshold
    t = threshold_at_far(impostor_scores, 1e-4)          # the cosine that 1 impostor in 10^4 exceeds
    far_at(impostor_scores, 0.7), tar_at(genuine_scores, 0.7)
    choice = upper_threshold("leak", "auto", impostor_scores, far=1e-4, paper=0.7, statistic="...")

    from fftrain.calibration.modes import fit_two_modes
    modes = fit_two_modes(scores)                         # two-Weibull mixture (evt.py) + valley + verdict
    modes.separated, modes.valley, modes.precision_recall(t), modes.explain()

    from fftrain.calibration.noise import fit_label_noise
    noise = fit_label_noise(own_centre_cosines, other_class_cosines)   # label noise of known shape: weight, split

numpy and scipy only (layer of data/model/head), so fusion, the audit and the pseudo-labels share it.
`evt.py` holds Otsu's threshold and the Weibull / two-Weibull-mixture fits.
"""
