"""Bundled device profiles (installed as the package ``fieldkit.bundled_profiles``)."""
