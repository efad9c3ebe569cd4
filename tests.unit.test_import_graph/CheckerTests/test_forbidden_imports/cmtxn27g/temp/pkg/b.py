import tests.helpers
import labrador
