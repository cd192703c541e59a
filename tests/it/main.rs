mod preflight;
