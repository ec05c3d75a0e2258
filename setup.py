from setuptools import find_packages, setup

# The wheel carries resources/ as transferstudio/_resources (core.paths.resources_dir() looks there).
setup(packages=find_packages(include=["transferstudio*"]) + ["transferstudio._resources"],
      package_dir={"transferstudio._resources": "resources"},
      package_data={"transferstudio._resources": ["**/*"]})
