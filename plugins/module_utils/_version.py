# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's version, as recorded in every image it captures. Private to the collection.

Modules run on targets without the collection's galaxy.yml or MANIFEST.json, so the version is a
constant here; tests/unit/image/test_catalogue.py checks that it equals galaxy.yml's.
"""

COLLECTION_VERSION = "0.1.0"
