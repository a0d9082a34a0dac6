"""The benchmark's Django project (bench/request_cost.py): the tests' project
(tests/testproject) with one middleware of its own in front, which hands
requests to ``/rotate/...`` the logged-in sessions in turn, identical with
and without the package."""
