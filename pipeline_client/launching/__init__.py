"""Pipeline launchers behind one small protocol: Vertex AI, local kfp runs, and the templates
they submit.
"""
