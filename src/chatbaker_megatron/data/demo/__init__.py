"""The bundled sample corpus and its preparation.

samples/    the bundled corpus (its README: sources and licences)
prepare.py  the demo data built once, before any rank starts
cli.py      `chatbaker prepare-data`: the data a run config asks for, without training
"""
